// A C++ program that explains one image with a pathrt bundle, no Python involved:
//   pathrt_explain BUNDLE IMAGE.pgm|IMAGE.ppm
// The image is binary 8-bit netpbm (P5 gray, P6 RGB) of the bundle's input size; it is scaled to
// [0, 1] and normalized with the target's mean and std, as pathrt's Target.preprocess does.
// Exit codes as the `pathrt` command's: 3 an unreadable, corrupted or modified bundle
// (pathrt::BundleError), 5 a bad image (pathrt::InputError), 1 anything else.
#include <ATen/ATen.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "pathrt/session.h"

namespace {

at::Tensor read_netpbm(const std::string& path, const pathrt::SessionInfo& info) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw pathrt::InputError("cannot open " + path);
  std::string magic;
  int64_t width = 0, height = 0, maxval = 0;
  file >> magic >> width >> height >> maxval;
  file.get();  // the single whitespace before the pixels
  const int64_t channels = magic == "P5" ? 1 : magic == "P6" ? 3 : 0;
  if (channels == 0 || maxval != 255) throw pathrt::InputError(path + " is not an 8-bit binary PGM (P5) or PPM (P6)");
  const auto& shape = info.input_shape;
  if (channels != shape[0] || height != shape[1] || width != shape[2]) {
    std::ostringstream msg;
    msg << path << " is " << channels << "x" << height << "x" << width << " but the bundle takes " << shape[0] << "x"
        << shape[1] << "x" << shape[2];
    throw pathrt::InputError(msg.str());
  }
  std::string pixels(static_cast<size_t>(channels * height * width), '\0');
  if (!file.read(pixels.data(), static_cast<std::streamsize>(pixels.size()))) {
    throw pathrt::InputError(path + " is truncated");
  }
  auto image = at::empty({1, channels, height, width}, at::kFloat);
  float* out = image.data_ptr<float>();
  for (int64_t y = 0; y < height; ++y) {
    for (int64_t x = 0; x < width; ++x) {
      for (int64_t c = 0; c < channels; ++c) {
        const float v = static_cast<unsigned char>(pixels[(y * width + x) * channels + c]) / 255.0f;
        out[(c * height + y) * width + x] = (v - static_cast<float>(info.mean[c])) / static_cast<float>(info.std[c]);
      }
    }
  }
  return image;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " BUNDLE IMAGE.pgm|IMAGE.ppm\n";
    return 2;
  }
  try {
    const pathrt::ExplainSession session(argv[1]);
    const auto& info = session.info();
    const pathrt::ExplainResult r = session.explain(read_netpbm(argv[2], info));
    const int64_t cls = r.classes.item<int64_t>();
    std::printf("class %lld (%s)\n", static_cast<long long>(cls), info.classes.at(cls).c_str());
    std::printf("Y %.6f\nO %.6f\n", r.y.item<float>(), r.o.item<float>());
    std::printf("kept %lld of %lld\n", static_cast<long long>(r.counts.item<int64_t>()),
                static_cast<long long>(r.masks.size(1)));
    int64_t offset = 0;
    for (size_t l = 0; l < info.channels.size(); ++l) {
      const auto kept = r.masks.narrow(1, offset, info.channels[l]).sum().item<int64_t>();
      std::printf("layer %zu kept %lld of %lld\n", l + 1, static_cast<long long>(kept),
                  static_cast<long long>(info.channels[l]));
      offset += info.channels[l];
    }
  } catch (const pathrt::BundleError& e) {
    std::cerr << "pathrt_explain: error: " << e.what() << "\n";
    return 3;
  } catch (const pathrt::InputError& e) {
    std::cerr << "pathrt_explain: error: " << e.what() << "\n";
    return 5;
  } catch (const std::exception& e) {
    std::cerr << "pathrt_explain: unexpected error (please report it): " << e.what() << "\n";
    return 1;
  }
  return 0;
}
