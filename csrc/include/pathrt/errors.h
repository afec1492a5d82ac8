// The errors of the C++ runtime. The Python module maps each onto its pathrt.errors class
// (bindings.cpp), so `except pathrt.errors.ArtifactError` catches a bad bundle from either API.
#pragma once

#include <stdexcept>

namespace pathrt {

// A bundle file that is unreadable, corrupted, modified, of another format or version, or
// inconsistent (pathrt.errors.BundleError).
class BundleError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Images or arguments of a wrong shape, dtype, device or value (pathrt.errors.InputError); the
// messages are those of the Python API's checks (pathrt.targets.pathway.check_images).
class InputError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

}  // namespace pathrt
