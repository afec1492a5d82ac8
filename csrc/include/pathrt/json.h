// A small, strict JSON reader for bundle headers: bounded nesting depth and input size, every
// read checked against the end of the buffer, errors as pathrt::BundleError with the offset.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "pathrt/errors.h"

namespace pathrt {

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  static Json parse(std::string_view text);  // throws BundleError

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  // Typed accessors throw BundleError naming `what` when the value has another type or range.
  bool as_bool(const char* what) const;
  double as_number(const char* what) const;
  int64_t as_int(const char* what, int64_t lo, int64_t hi) const;
  const std::string& as_string(const char* what) const;
  const std::vector<Json>& as_array(const char* what) const;
  const Json& at(const std::string& key) const;  // a required object member
  const Json* find(const std::string& key) const;  // nullptr when absent
  const std::map<std::string, Json>& items(const char* what) const;
  std::vector<int64_t> int_list(const char* what, size_t size, int64_t lo, int64_t hi) const;  // size 0: any

 private:
  friend class JsonParser;
  Type type_ = Type::Null;
  bool bool_ = false;
  double number_ = 0.0;
  std::string string_;
  std::vector<Json> array_;
  std::map<std::string, Json> object_;
};

}  // namespace pathrt
