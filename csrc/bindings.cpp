// The pybind11 module pathrt._C: host helpers and the ExplainSession class. Tensor ops are
// registered with the dispatcher (TORCH_LIBRARY_IMPL in cpu/ and cuda/) and reached through
// torch.ops.pathrt; the session's internal direct conv is bound here only for tests and measurements.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/extension.h>
#include <torch/version.h>

#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "pathrt/buffer_pool.h"
#include "pathrt/call_pool.h"
#include "pathrt/direct_conv.h"
#include "pathrt/kernels.h"
#include "pathrt/pool.h"
#include "pathrt/packed_conv.h"
#include "pathrt/session.h"
#include "pathrt/threads.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef PATHRT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#ifndef PATHRT_CUDA_ARCHS
#define PATHRT_CUDA_ARCHS ""
#endif

namespace py = pybind11;

namespace {

py::dict cpu_features() {
  py::dict features;
  __builtin_cpu_init();
  features["sse4_2"] = static_cast<bool>(__builtin_cpu_supports("sse4.2"));
  features["popcnt"] = static_cast<bool>(__builtin_cpu_supports("popcnt"));
  features["avx"] = static_cast<bool>(__builtin_cpu_supports("avx"));
  features["avx2"] = static_cast<bool>(__builtin_cpu_supports("avx2"));
  features["fma"] = static_cast<bool>(__builtin_cpu_supports("fma"));
  features["avx512f"] = static_cast<bool>(__builtin_cpu_supports("avx512f"));
  return features;
}

py::dict build_info() {
  py::dict info;
  info["torch"] = TORCH_VERSION;
  info["compiler"] = __VERSION__;
  info["cplusplus"] = static_cast<long>(__cplusplus);
#ifdef _OPENMP
  info["openmp"] = static_cast<long>(_OPENMP);
  info["openmp_max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = py::none();
  info["openmp_max_threads"] = 1;
#endif
#ifdef PATHRT_WITH_CUDA
  info["cuda"] = true;
  info["cuda_runtime_version"] = static_cast<long>(CUDART_VERSION);
  info["cuda_archs"] = PATHRT_CUDA_ARCHS;
#else
  info["cuda"] = false;
  info["cuda_runtime_version"] = py::none();
  info["cuda_archs"] = "";
#endif
  info["cpu_features"] = cpu_features();
  info["call_pool"] = pathrt::call_pool::stats().enabled;
  return info;
}

py::dict explain(const pathrt::ExplainSession& session, const py::object& given) {
  if (!THPVariable_Check(given.ptr())) {  // as the Python API's check, not pybind11's signature error
    throw pathrt::InputError("images must be a (N, C, H, W) tensor, got " +
                             py::str(py::type::of(given).attr("__name__")).cast<std::string>());
  }
  const at::Tensor images = given.cast<at::Tensor>();
  pathrt::ExplainResult r;
  {
    py::gil_scoped_release release;  // other Python threads run (and may call this session) meanwhile
    r = session.explain(images);
  }
  py::dict out;
  out["logits"] = r.logits;
  out["scores"] = r.scores;
  out["masks"] = r.masks;
  out["packed"] = r.packed;
  out["counts"] = r.counts;
  out["pathway_logits"] = r.pathway_logits;
  out["classes"] = r.classes;
  out["Y"] = r.y;
  out["O"] = r.o;
  py::dict timings;
  timings["plain_ms"] = r.plain_ms;
  timings["generator_ms"] = r.generator_ms;
  timings["pathway_ms"] = r.pathway_ms;
  timings["generator.rfe_convs_us"] = r.rfe_convs_us;
  timings["generator.rfe_tail_us"] = r.rfe_tail_us;
  timings["generator.encoder_us"] = r.encoder_us;
  timings["generator.decoder_us"] = r.decoder_us;
  timings["threads"] = r.threads;
  out["timings"] = timings;
  return out;
}

// Sets a Python error of class `type`; a message quoting bytes of a corrupt file may not be UTF-8,
// so undecodable bytes are replaced (PyErr_SetString would raise UnicodeDecodeError instead).
void raise(PyObject* type, const char* message) {
  PyObject* text = PyUnicode_DecodeUTF8(message, static_cast<Py_ssize_t>(std::strlen(message)), "replace");
  PyErr_SetObject(type, text);
  Py_XDECREF(text);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pathrt native extension: host helpers; tensor ops live in torch.ops.pathrt";
  m.def("build_info", &build_info,
        "How this extension was built: torch, compiler, OpenMP, CUDA kernels and archs, and the "
        "CPU features of this machine.");
  m.def("cpu_features", &cpu_features, "CPU features of this machine (run-time check).");
  m.def(
      "thread_policy",
      [] {
        at::init_num_threads();
        const int threads = pathrt::max_threads();
        py::dict out;
        out["threads"] = threads;
        out["wake_us"] = pathrt::wake_cost_us(threads);
        out["parallel_work"] = pathrt::parallel_work(threads);
        return out;
      },
      "The session's thread policy on this thread: OpenMP threads, the measured wake-up of a parallel region "
      "(us) and the least work (multiply-adds) a step needs to run on all threads rather than one.");
  m.def(
      "buffer_pool",
      [] {
        const auto s = pathrt::buffer_pool_stats();
        py::dict out;
        out["installed"] = s.installed;
        out["held_bytes"] = s.held_bytes;
        out["free_bytes"] = s.free_bytes;
        out["blocks"] = s.blocks;
        out["min_block_bytes"] = pathrt::kMinPooledBytes;
        return out;
      },
      "The pool of large CPU buffers that session calls reuse across calls: whether it is torch's CPU "
      "allocator now, bytes held (in use and free), bytes free, blocks, and the least size it pools.");
  m.def(
      "call_pool",
      [] {
        const auto s = pathrt::call_pool::stats();
        py::dict out;
        out["enabled"] = s.enabled;
        out["jobs"] = s.jobs;
        out["helper_chunks"] = s.helper_chunks;
        out["late"] = s.late;
        out["suspended_scopes"] = s.suspended_scopes;
        out["contended_scopes"] = s.contended_scopes;
        return out;
      },
      "The session calls' helper pool (csrc/include/pathrt/call_pool.h), this process so far: whether it is on "
      "(PATHRT_CALL_POOL), loops it ran, chunks its helpers ran, late helpers, calls it sat out after a late "
      "helper or a contended call, and contended calls: their calling thread left its CPU (preempted, or blocked on a "
      "descheduled peer) and ran on one for under 0.6 of the time.");
  m.def(
      "call_pool_loop",
      [](int threads, int64_t n, int64_t grain, double caller_us, double helper_us, int64_t fail_at, bool spin) {
        py::gil_scoped_release release;
        std::vector<int> runs(static_cast<size_t>(std::max<int64_t>(0, n))), on_helper(runs.size());
        const auto caller = std::this_thread::get_id();
        {
          const pathrt::CallScope scope(threads);
          const pathrt::ThreadLimit serial(1);
          pathrt::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
            const bool helper = std::this_thread::get_id() != caller;
            for (int64_t i = begin; i < end; ++i) {
              if (i == fail_at) throw std::runtime_error("call_pool_loop: failing at " + std::to_string(i));
              const std::chrono::duration<double, std::micro> wait(helper ? helper_us : caller_us);
              if (spin) {
                const auto start = std::chrono::steady_clock::now();
                while (std::chrono::steady_clock::now() - start < wait) {
                }
              } else {
                std::this_thread::sleep_for(wait);
              }
              ++runs[static_cast<size_t>(i)];
              on_helper[static_cast<size_t>(i)] = helper;
            }
          });
        }
        return std::make_pair(runs, on_helper);
      },
      py::arg("threads"), py::arg("n"), py::arg("grain"), py::arg("caller_us") = 0.0, py::arg("helper_us") = 0.0,
      py::arg("fail_at") = -1, py::arg("spin") = false,
      "Test only: one pathrt::parallel_for over range(n) inside a session call's scope on `threads` threads, "
      "each index sleeping (or, with spin, busy for) caller_us on the calling thread and helper_us on a helper "
      "(and raising at fail_at). "
      "Returns per index the times it ran and whether a helper ran it.");
  m.def(
      "direct_conv2d",
      [](const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
         const std::optional<at::Tensor>& residual, bool relu, std::vector<int64_t> stride,
         std::vector<int64_t> padding) {
        py::gil_scoped_release release;
        return pathrt::direct_conv2d(x, pathrt::direct_conv_weight(weight), bias.value_or(at::Tensor()),
                                     residual.value_or(at::Tensor()), relu, stride, padding);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("residual"), py::arg("relu"), py::arg("stride"),
      py::arg("padding"),
      "The session's direct conv (csrc/include/pathrt/direct_conv.h) on an OIHW weight, blocked on each call: "
      "for tests and measurements. Channels-last out.");
  m.def(
      "pathway_conv2d_blocked",
      [](const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
         const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& in_mask,
         const std::optional<at::Tensor>& out_mask, std::vector<int64_t> stride, std::vector<int64_t> padding,
         bool relu) {
        py::gil_scoped_release release;
        return pathrt::pathway_conv2d_cpu(x, weight, bias, residual, in_mask, out_mask, stride, padding, relu,
                                          pathrt::direct_conv_weight(weight.contiguous()));
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("residual"), py::arg("in_mask"), py::arg("out_mask"),
      py::arg("stride"), py::arg("padding"), py::arg("relu"),
      "pathway_conv2d as the session runs it, given the weight blocked for the direct conv (blocked on each "
      "call here): its direct-conv runs read the blocked weight in place. For tests and measurements.");
  // The session's window pooling (csrc/include/pathrt/pool.h), max and average: for tests and measurements.
  using WindowPool = at::Tensor (*)(const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, bool);
  for (const auto& [name, pool] : {std::pair<const char*, WindowPool>{"max_pool2d", &pathrt::max_pool2d_cpu},
                                   std::pair<const char*, WindowPool>{"avg_pool2d", &pathrt::avg_pool2d_cpu}}) {
    m.def(
        name,
        [pool](const at::Tensor& x, std::vector<int64_t> kernel, std::vector<int64_t> stride,
               std::vector<int64_t> padding, bool ceil_mode) {
          py::gil_scoped_release release;
          return pool(x, kernel, stride, padding, ceil_mode);
        },
        py::arg("x"), py::arg("kernel"), py::arg("stride"), py::arg("padding"), py::arg("ceil_mode") = false,
        "The session's window pooling (csrc/include/pathrt/pool.h): for tests and measurements.");
  }
  m.def(
      "adaptive_avg_pool2d",
      [](const at::Tensor& x, std::vector<int64_t> output_size) {
        py::gil_scoped_release release;
        return pathrt::adaptive_avg_pool2d_cpu(x, output_size);
      },
      py::arg("x"), py::arg("output_size"),
      "The session's adaptive average pooling (csrc/include/pathrt/pool.h): for tests and measurements.");
  m.def(
      "direct_conv_pays",
      [](const at::Tensor& x, const at::Tensor& weight, std::vector<int64_t> stride, std::vector<int64_t> padding) {
        return pathrt::direct_conv_pays(x, weight, stride, padding);
      },
      py::arg("x"), py::arg("weight"), py::arg("stride"), py::arg("padding"),
      "Whether the session's dense convs run conv(x, weight) through the direct conv.");
  m.def(
      "bundle_format",
      [] {
        const auto f = pathrt::bundle_format();
        py::dict out;
        out["version"] = f.version;
        out["ops"] = f.ops;
        out["strategies"] = f.strategies;
        out["measures"] = f.measures;
        return out;
      },
      "The plan contract the C++ bundle reader implements: format version, plan ops, conv strategies, measures.");

  // The runtime's C++ errors raise pathrt.errors' classes, so Python callers catch one hierarchy;
  // the classes are looked up once here and kept for the life of the process.
  static PyObject* bundle_error = nullptr;
  static PyObject* input_error = nullptr;
  const auto errors = py::module_::import("pathrt.errors");
  bundle_error = py::object(errors.attr("BundleError")).release().ptr();
  input_error = py::object(errors.attr("InputError")).release().ptr();
  m.attr("BundleError") = py::handle(bundle_error);
  m.attr("InputError") = py::handle(input_error);
  m.attr("DOT_MAX_PIXELS") = pathrt::kDotMaxPixels;
  py::register_exception_translator([](std::exception_ptr error) {
    try {
      if (error) std::rethrow_exception(error);
    } catch (const pathrt::BundleError& e) {
      raise(bundle_error, e.what());
    } catch (const pathrt::InputError& e) {
      raise(input_error, e.what());
    }
  });
  py::class_<pathrt::ExplainSession>(m, "ExplainSession",
                                     "The whole explain path in native code from a bundle (`pathrt bundle`). "
                                     "explain() releases the GIL; one session may serve several threads at once.")
      .def(py::init<const std::string&, int>(), py::arg("bundle_path"), py::arg("num_threads") = 0,
           py::call_guard<py::gil_scoped_release>(),
           "Loads and checks a bundle; num_threads > 0 caps the threads each explain() call uses.")
      .def_static("from_bytes",
                  [](const py::bytes& data, const std::string& name, int num_threads) {
                    pathrt::ExplainSession::Buffer buffer{std::string(data), name};
                    py::gil_scoped_release release;
                    return std::make_unique<pathrt::ExplainSession>(std::move(buffer), num_threads);
                  },
                  py::arg("data"), py::arg("name") = "<bytes>", py::arg("num_threads") = 0,
                  "A session from a bundle's bytes (pathrt.runtime.bundle.bundle_bytes), without a file.")
      .def("explain", &explain, py::arg("images"),
           "floating-point (N, C, H, W) CPU images (preprocessed; checked as the Python API checks them, "
           "raising pathrt.errors.InputError) -> dict of logits, scores, masks, packed, counts, "
           "pathway_logits, classes, Y, O, and timings (ms of the plain pass, generator and pathway pass).")
      .def_property_readonly("arch", [](const pathrt::ExplainSession& s) { return s.info().arch; })
      .def_property_readonly("classes", [](const pathrt::ExplainSession& s) { return s.info().classes; })
      .def_property_readonly("input_shape", [](const pathrt::ExplainSession& s) { return s.info().input_shape; })
      .def_property_readonly("channels", [](const pathrt::ExplainSession& s) { return s.info().channels; })
      .def_property_readonly("mean", [](const pathrt::ExplainSession& s) { return s.info().mean; })
      .def_property_readonly("std", [](const pathrt::ExplainSession& s) { return s.info().std; })
      .def_property_readonly("target_fingerprint",
                             [](const pathrt::ExplainSession& s) { return s.info().target_fingerprint; })
      .def_property_readonly("num_threads", [](const pathrt::ExplainSession& s) { return s.info().num_threads; })
      .def_property_readonly("load_ms", [](const pathrt::ExplainSession& s) { return s.info().load_ms; },
                             "Wall time of loading and checking the bundle (read from bytes: without the file read).")
      .def_property_readonly("digest_ms", [](const pathrt::ExplainSession& s) { return s.info().digest_ms; },
                             "Of load_ms: the SHA-256 check of the bundle's tensors.")
      .def_property_readonly("joint_tail_steps", [](const pathrt::ExplainSession& s) { return s.info().joint_tail_steps; },
                             "How many of the plan's last steps (a classifier) run once, in the pathway phase, "
                             "on both passes' values stacked (0: none).");
}
