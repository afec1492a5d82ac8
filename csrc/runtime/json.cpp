// The bundle header's JSON reader (see pathrt/json.h).
#include "pathrt/json.h"

#include <charconv>
#include <cmath>
#include <string>
#include <system_error>

namespace pathrt {

namespace {
constexpr int kMaxDepth = 64;
}

class JsonParser {
 public:
  explicit JsonParser(std::string_view text) : text_(text) {}

  Json document() {
    Json value = parse_value(0);
    skip_space();
    if (pos_ != text_.size()) fail("trailing characters after the JSON value");
    return value;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw BundleError("bundle header is not valid JSON: " + what + " at byte " + std::to_string(pos_));
  }

  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' || text_[pos_] == '\r' ||
                                   text_[pos_] == '\t')) {
      ++pos_;
    }
  }

  char peek() {
    if (pos_ >= text_.size()) fail("unexpected end");
    return text_[pos_];
  }

  void expect(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) fail("expected '" + std::string(word) + "'");
    pos_ += word.size();
  }

  Json parse_value(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than 64 levels");
    skip_space();
    Json v;
    const char c = peek();
    if (c == '{') {
      v.type_ = Json::Type::Object;
      ++pos_;
      skip_space();
      if (peek() == '}') {
        ++pos_;
        return v;
      }
      while (true) {
        skip_space();
        if (peek() != '"') fail("expected a string key");
        std::string key = parse_string();
        skip_space();
        if (peek() != ':') fail("expected ':'");
        ++pos_;
        Json item = parse_value(depth + 1);
        if (!v.object_.emplace(std::move(key), std::move(item)).second) fail("duplicate key");
        skip_space();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        if (peek() != '}') fail("expected ',' or '}'");
        ++pos_;
        return v;
      }
    }
    if (c == '[') {
      v.type_ = Json::Type::Array;
      ++pos_;
      skip_space();
      if (peek() == ']') {
        ++pos_;
        return v;
      }
      while (true) {
        v.array_.push_back(parse_value(depth + 1));
        skip_space();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        if (peek() != ']') fail("expected ',' or ']'");
        ++pos_;
        return v;
      }
    }
    if (c == '"') {
      v.type_ = Json::Type::String;
      v.string_ = parse_string();
      return v;
    }
    if (c == 't' || c == 'f') {
      v.type_ = Json::Type::Bool;
      v.bool_ = c == 't';
      expect(c == 't' ? "true" : "false");
      return v;
    }
    if (c == 'n') {
      expect("null");
      return v;
    }
    v.type_ = Json::Type::Number;
    v.number_ = parse_number();
    return v;
  }

  // RFC 8259 numbers only: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? (no '+1', '01', '.5', '1.'),
  // converted by std::from_chars, which ignores the C locale (a comma-decimal host reads "0.5" too).
  double parse_number() {
    const size_t start = pos_;
    auto digit = [&] { return pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9'; };
    auto digits = [&] {
      if (!digit()) return false;
      while (digit()) ++pos_;
      return true;
    };
    if (pos_ < text_.size() && text_[pos_] == '-') ++pos_;
    if (pos_ < text_.size() && text_[pos_] == '0') {
      ++pos_;
      if (digit()) fail("malformed number: a leading zero");
    } else if (!digits()) {
      fail(pos_ == start ? "expected a value" : "malformed number: no digits after '-'");
    }
    if (pos_ < text_.size() && text_[pos_] == '.') {
      ++pos_;
      if (!digits()) fail("malformed number: no digits after the decimal point");
    }
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
      if (!digits()) fail("malformed number: no digits in the exponent");
    }
    if (pos_ - start > 64) fail("malformed number: longer than 64 characters");
    double value = 0.0;
    const auto [end, error] = std::from_chars(text_.data() + start, text_.data() + pos_, value);
    if (error != std::errc() || end != text_.data() + pos_ || !std::isfinite(value)) {
      fail("malformed number '" + std::string(text_.substr(start, pos_ - start)) + "'");
    }
    return value;
  }

  unsigned hex4() {
    if (text_.size() - pos_ < 4) fail("truncated \\u escape");
    unsigned code = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = text_[pos_++];
      code <<= 4;
      if (h >= '0' && h <= '9') code |= h - '0';
      else if (h >= 'a' && h <= 'f') code |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') code |= h - 'A' + 10;
      else fail("bad \\u escape");
    }
    return code;
  }

  static void append_utf8(std::string& out, unsigned code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xC0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
      out += static_cast<char>(0xE0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (code >> 18));
      out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }

  std::string parse_string() {
    ++pos_;  // the opening quote
    std::string out;
    while (true) {
      const char c = peek();
      ++pos_;
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      const char e = peek();
      ++pos_;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned code = hex4();
          if (code >= 0xD800 && code < 0xDC00) {  // a surrogate pair
            expect("\\u");
            const unsigned low = hex4();
            if (low < 0xDC00 || low >= 0xE000) fail("unpaired surrogate");
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          } else if (code >= 0xDC00 && code < 0xE000) {
            fail("unpaired surrogate");
          }
          append_utf8(out, code);
          break;
        }
        default: fail("bad escape");
      }
    }
  }

  std::string_view text_;
  size_t pos_ = 0;
};

Json Json::parse(std::string_view text) { return JsonParser(text).document(); }

namespace {
[[noreturn]] void wrong(const char* what, const char* expected) {
  throw BundleError(std::string("bundle plan: ") + what + " must be " + expected);
}
}  // namespace

bool Json::as_bool(const char* what) const {
  if (type_ != Type::Bool) wrong(what, "true or false");
  return bool_;
}

double Json::as_number(const char* what) const {
  if (type_ != Type::Number) wrong(what, "a number");
  return number_;
}

int64_t Json::as_int(const char* what, int64_t lo, int64_t hi) const {
  const double v = as_number(what);
  if (v != std::floor(v) || v < static_cast<double>(lo) || v > static_cast<double>(hi)) {
    throw BundleError(std::string("bundle plan: ") + what + " must be an integer in [" + std::to_string(lo) + ", " +
                      std::to_string(hi) + "]");
  }
  return static_cast<int64_t>(v);
}

const std::string& Json::as_string(const char* what) const {
  if (type_ != Type::String) wrong(what, "a string");
  return string_;
}

const std::vector<Json>& Json::as_array(const char* what) const {
  if (type_ != Type::Array) wrong(what, "an array");
  return array_;
}

const std::map<std::string, Json>& Json::items(const char* what) const {
  if (type_ != Type::Object) wrong(what, "an object");
  return object_;
}

const Json* Json::find(const std::string& key) const {
  if (type_ != Type::Object) return nullptr;
  const auto it = object_.find(key);
  return it == object_.end() ? nullptr : &it->second;
}

const Json& Json::at(const std::string& key) const {
  const Json* v = find(key);
  if (v == nullptr) throw BundleError("bundle plan: missing field '" + key + "'");
  return *v;
}

std::vector<int64_t> Json::int_list(const char* what, size_t size, int64_t lo, int64_t hi) const {
  const auto& items = as_array(what);
  if (size != 0 && items.size() != size) {
    throw BundleError(std::string("bundle plan: ") + what + " must have " + std::to_string(size) + " entries");
  }
  std::vector<int64_t> out;
  for (const auto& item : items) out.push_back(item.as_int(what, lo, hi));
  return out;
}

}  // namespace pathrt
