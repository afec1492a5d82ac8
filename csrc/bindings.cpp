// The pybind11 module pathrt._C: host helpers. Tensor ops are registered with the dispatcher
// (TORCH_LIBRARY_IMPL in cpu/ and cuda/) and reached through torch.ops.pathrt, never from here.
#include <pybind11/pybind11.h>
#include <torch/version.h>

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
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pathrt native extension: host helpers; tensor ops live in torch.ops.pathrt";
  m.def("build_info", &build_info,
        "How this extension was built: torch, compiler, OpenMP, CUDA kernels and archs, and the "
        "CPU features of this machine.");
  m.def("cpu_features", &cpu_features, "CPU features of this machine (run-time check).");
}
