#pragma once
// A GGUF (v2/v3) reader: the file is memory-mapped read-only (or parsed from a copied buffer) and
// every count, length, type, dimension and offset is validated before use, with overflow-checked
// arithmetic, so a bad or hostile file gets one mil::Error naming the field, the byte offset and
// what to do. Metadata strings and string arrays are views into the mapping; tensor data is
// never touched while parsing (opening is independent of the size of the weights).
//
// Layout (little-endian): "GGUF", u32 version, u64 tensor count, u64 metadata count; metadata
// entries (string key, u32 value type, value); tensor infos (string name, u32 n_dims, u64 ne[n_dims],
// u32 ggml type, u64 offset relative to the data section); padding to general.alignment (default
// 32); the data section. A string is a u64 length and that many bytes (no terminator).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "../core/error.hpp"
#include "dequantize.hpp"
#include "mapped_file.hpp"

namespace mil::io {

enum class GgufType : uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7, string = 8, array = 9,
  u64 = 10, i64 = 11, f64 = 12,
};

inline std::string_view gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::u8: return "uint8";
    case GgufType::i8: return "int8";
    case GgufType::u16: return "uint16";
    case GgufType::i16: return "int16";
    case GgufType::u32: return "uint32";
    case GgufType::i32: return "int32";
    case GgufType::f32: return "float32";
    case GgufType::boolean: return "bool";
    case GgufType::string: return "string";
    case GgufType::array: return "array";
    case GgufType::u64: return "uint64";
    case GgufType::i64: return "int64";
    case GgufType::f64: return "float64";
  }
  return "unknown";
}

// Bytes of a fixed-size value; 0 for string and array (variable size) and for unknown types.
inline int64_t gguf_scalar_bytes(GgufType t) {
  switch (t) {
    case GgufType::u8: case GgufType::i8: case GgufType::boolean: return 1;
    case GgufType::u16: case GgufType::i16: return 2;
    case GgufType::u32: case GgufType::i32: case GgufType::f32: return 4;
    case GgufType::u64: case GgufType::i64: case GgufType::f64: return 8;
    default: return 0;
  }
}
inline bool gguf_is_integer(GgufType t) {
  return gguf_scalar_bytes(t) > 0 && t != GgufType::f32 && t != GgufType::f64 &&
         t != GgufType::boolean;
}

// One metadata value. Scalars keep their bytes (decoded by the typed accessors); strings are views
// into the file; numeric arrays point at their packed elements in the file; string arrays and
// nested arrays are decoded into `strings` / `items`.
struct GgufValue {
  GgufType type = GgufType::u8;
  GgufType elem_type = GgufType::u8;  // arrays only
  uint64_t scalar = 0;                // the raw little-endian bytes of a fixed-size scalar
  std::string_view str;               // string
  int64_t count = 0;                  // arrays: number of elements
  const uint8_t* raw = nullptr;       // numeric arrays: the packed elements
  std::vector<std::string_view> strings;  // string arrays
  std::vector<GgufValue> items;           // arrays of arrays
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // ggml order: shape[0] (ne[0]) is the contiguous dimension
  GgmlType type = GgmlType::F32;
  int64_t offset = 0;          // from the start of the data section
  int64_t n_bytes = 0;
  const uint8_t* data = nullptr;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;  // validated against overflow when the file was opened
    return n;
  }
  int64_t rows() const { return shape.empty() ? 0 : numel() / shape[0]; }
  int64_t row_bytes() const { return rows() == 0 ? 0 : n_bytes / rows(); }
  std::string shape_str() const {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
};

namespace detail {

// A cursor over untrusted bytes. Every read checks the bytes left; errors name the field being
// read (`what`, set by the caller), the byte offset and the remedy.
class GgufCursor {
 public:
  GgufCursor(std::span<const uint8_t> bytes, const std::string& source) : b_(bytes), src_(source) {}

  int64_t pos() const { return int64_t(pos_); }
  int64_t left() const { return int64_t(b_.size() - pos_); }
  const uint8_t* here() const { return b_.data() + pos_; }
  std::string what;  // e.g. "tensor info 3 ('blk.0.attn_q.weight')"

  [[noreturn]] void fail(const std::string& msg) const {
    MIL_FAIL("GGUF '", src_, "': ", msg, " at byte ", pos_, " while reading ", what,
             ": the file is corrupt or truncated; re-download or re-convert it");
  }
  void need(int64_t n, const char* field) const {
    if (n < 0 || n > left())
      MIL_FAIL("GGUF '", src_, "': file truncated at byte ", pos_, " while reading ", field, " of ",
               what, " (", n, " bytes needed, ", left(), " left): the file is incomplete or "
               "corrupt; re-download or re-convert it");
  }
  template <class T>
  T read(const char* field) {
    need(int64_t(sizeof(T)), field);
    T v;
    std::memcpy(&v, here(), sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  // A u64 count or length, checked to fit int64 before any use.
  int64_t read_size(const char* field) {
    uint64_t v = read<uint64_t>(field);
    if (v > uint64_t(INT64_MAX)) {
      pos_ -= 8;
      fail(std::string(field) + " " + std::to_string(v) + " is impossibly large (corrupt file)");
    }
    return int64_t(v);
  }
  std::string_view read_string(const char* field) {
    int64_t n = read_size(field);
    if (n > left()) {
      pos_ -= 8;
      MIL_FAIL("GGUF '", src_, "': ", field, " length ", n, " at byte ", pos_, " of ", what,
               " exceeds the ", left() - 8, " bytes left in the file: the file is corrupt or "
               "truncated; re-download it");
    }
    std::string_view s(reinterpret_cast<const char*>(here()), size_t(n));
    pos_ += size_t(n);
    return s;
  }
  void skip(int64_t n, const char* field) {
    need(n, field);
    pos_ += size_t(n);
  }

 private:
  std::span<const uint8_t> b_;
  size_t pos_ = 0;
  const std::string& src_;
};

}  // namespace detail

class GgufFile {
 public:
  static GgufFile open(const std::string& path) {
    GgufFile f;
    f.source_ = path;
    f.bytes_ = MappedFile::open(path);
    f.parse();
    return f;
  }
  // Parses a copy of `bytes` (tests, fuzzing, files already in memory).
  static GgufFile from_bytes(std::span<const uint8_t> bytes, std::string name = "<memory>") {
    GgufFile f;
    f.source_ = std::move(name);
    f.bytes_ = MappedFile::copy_of(bytes);
    f.parse();
    return f;
  }

  uint32_t version() const { return version_; }
  int64_t alignment() const { return alignment_; }
  int64_t data_offset() const { return data_offset_; }  // byte offset of the data section
  int64_t file_size() const { return int64_t(bytes_.size()); }
  const std::string& source() const { return source_; }

  // ---- metadata ----
  bool has(const std::string& key) const { return index_.count(key) != 0; }
  const std::vector<std::string>& keys() const { return keys_; }  // in file order
  const GgufValue& value(const std::string& key) const {
    auto it = index_.find(key);
    MIL_CHECK(it != index_.end(), "GGUF '", source_, "': metadata key '", key, "' is missing",
              ": the file was not written for this model type or by a different converter");
    return it->second;
  }
  std::optional<GgufType> type_of(const std::string& key) const {
    auto it = index_.find(key);
    if (it == index_.end()) return std::nullopt;
    return it->second.type;
  }

  uint32_t get_u32(const std::string& key) const {
    return uint32_t(get_integer(key, 0, UINT32_MAX, "uint32"));
  }
  int64_t get_i64(const std::string& key) const {
    return get_integer(key, INT64_MIN, INT64_MAX, "int64");
  }
  float get_f32(const std::string& key) const { return float(get_f64(key)); }
  double get_f64(const std::string& key) const {
    const GgufValue& v = value(key);
    if (v.type == GgufType::f32) return double(bits_float(uint32_t(v.scalar)));
    if (v.type == GgufType::f64) {
      double d;
      std::memcpy(&d, &v.scalar, 8);
      return d;
    }
    wrong_type(key, v, "float32 or float64");
  }
  bool get_bool(const std::string& key) const {
    const GgufValue& v = value(key);
    if (v.type != GgufType::boolean) wrong_type(key, v, "bool");
    return v.scalar != 0;
  }
  std::string get_string(const std::string& key) const { return std::string(get_string_view(key)); }
  std::string_view get_string_view(const std::string& key) const {
    const GgufValue& v = value(key);
    if (v.type != GgufType::string) wrong_type(key, v, "string");
    return v.str;
  }
  int64_t array_size(const std::string& key) const {
    const GgufValue& v = value(key);
    if (v.type != GgufType::array) wrong_type(key, v, "array");
    return v.count;
  }
  const std::vector<std::string_view>& get_string_array(const std::string& key) const {
    const GgufValue& v = value(key);
    if (v.type != GgufType::array || v.elem_type != GgufType::string)
      wrong_type(key, v, "array of string");
    return v.strings;
  }
  // Integer arrays of any integer element type, as int64 (uint64 values above INT64_MAX throw).
  std::vector<int64_t> get_i64_array(const std::string& key) const {
    const GgufValue& v = value(key);
    if (v.type != GgufType::array || !gguf_is_integer(v.elem_type))
      wrong_type(key, v, "array of integers");
    std::vector<int64_t> out(size_t(v.count));
    const int64_t w = gguf_scalar_bytes(v.elem_type);
    for (int64_t i = 0; i < v.count; ++i) {
      uint64_t raw = 0;
      std::memcpy(&raw, v.raw + i * w, size_t(w));
      out[size_t(i)] = integer_value(v.elem_type, raw, key);
    }
    return out;
  }
  std::vector<float> get_f32_array(const std::string& key) const {
    const GgufValue& v = value(key);
    if (v.type != GgufType::array ||
        (v.elem_type != GgufType::f32 && v.elem_type != GgufType::f64))
      wrong_type(key, v, "array of float32 or float64");
    std::vector<float> out(size_t(v.count));
    for (int64_t i = 0; i < v.count; ++i) {
      if (v.elem_type == GgufType::f32) {
        std::memcpy(&out[size_t(i)], v.raw + 4 * i, 4);
      } else {
        double d;
        std::memcpy(&d, v.raw + 8 * i, 8);
        out[size_t(i)] = float(d);
      }
    }
    return out;
  }

  // std::nullopt when the key is absent; a present key of the wrong type still throws.
  std::optional<uint32_t> find_u32(const std::string& k) const { return opt(k, &GgufFile::get_u32); }
  std::optional<int64_t> find_i64(const std::string& k) const { return opt(k, &GgufFile::get_i64); }
  std::optional<float> find_f32(const std::string& k) const { return opt(k, &GgufFile::get_f32); }
  std::optional<bool> find_bool(const std::string& k) const { return opt(k, &GgufFile::get_bool); }
  std::optional<std::string> find_string(const std::string& k) const {
    return opt(k, &GgufFile::get_string);
  }

  // ---- tensors ----
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(const std::string& name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
  }
  const TensorInfo& tensor(const std::string& name) const {
    const TensorInfo* t = find_tensor(name);
    MIL_CHECK(t, "GGUF '", source_, "': tensor '", name, "' is missing",
              ": the file is not a complete model of the expected architecture");
    return *t;
  }
  // Tensor `name`, which must have ggml shape `ne` (what a configuration read from the metadata
  // expects: a mismatch means that metadata and weights disagree).
  const TensorInfo& tensor(const std::string& name, const std::vector<int64_t>& ne) const {
    const TensorInfo& t = tensor(name);
    if (t.shape != ne) {
      std::string want = "[";
      for (size_t i = 0; i < ne.size(); ++i) want += (i ? ", " : "") + std::to_string(ne[i]);
      MIL_FAIL("GGUF '", source_, "': tensor '", name, "' has shape ", t.shape_str(), ", expected ",
               want, "] (ggml order) for the model configuration in the file's metadata: the ",
               "metadata and the weights disagree");
    }
    return t;
  }
  // The layers that tensor names "<prefix>N.*" (llama.cpp's "blk.N.") refer to: how many
  // distinct N there are and the largest, -1 when none.
  struct LayerIndices {
    int64_t distinct = 0, largest = -1;
  };
  LayerIndices layer_indices(std::string_view prefix = "blk.") const {
    std::vector<int64_t> seen;
    for (const auto& t : tensors_) {
      std::string_view n = t.name;
      if (!n.starts_with(prefix)) continue;
      n.remove_prefix(prefix.size());
      int64_t l = 0;
      size_t i = 0;
      // Digits up to the next '.'; an index beyond int64 counts as the largest possible.
      for (; i < n.size() && n[i] >= '0' && n[i] <= '9'; ++i)
        l = l > (INT64_MAX - 9) / 10 ? INT64_MAX : l * 10 + (n[i] - '0');
      if (i > 0 && i < n.size() && n[i] == '.') seen.push_back(l);
    }
    std::sort(seen.begin(), seen.end());
    LayerIndices out;
    out.distinct = int64_t(std::unique(seen.begin(), seen.end()) - seen.begin());
    if (out.distinct > 0) out.largest = seen[size_t(out.distinct - 1)];
    return out;
  }

 private:
  GgufFile() = default;

  [[noreturn]] void wrong_type(const std::string& key, const GgufValue& v,
                               const char* wanted) const {
    std::string have(gguf_type_name(v.type));
    if (v.type == GgufType::array) have += " of " + std::string(gguf_type_name(v.elem_type));
    MIL_FAIL("GGUF '", source_, "': metadata key '", key, "' has type ", have, ", expected ",
             wanted, ": the file was written by an incompatible converter");
  }
  int64_t integer_value(GgufType t, uint64_t raw, const std::string& key) const {
    switch (t) {
      case GgufType::u8: return int64_t(uint8_t(raw));
      case GgufType::i8: return int64_t(int8_t(uint8_t(raw)));
      case GgufType::u16: return int64_t(uint16_t(raw));
      case GgufType::i16: return int64_t(int16_t(uint16_t(raw)));
      case GgufType::u32: return int64_t(uint32_t(raw));
      case GgufType::i32: return int64_t(int32_t(uint32_t(raw)));
      case GgufType::i64: return int64_t(raw);
      case GgufType::u64:
        MIL_CHECK(raw <= uint64_t(INT64_MAX), "GGUF '", source_, "': metadata key '", key,
                  "' value ", raw, " does not fit int64");
        return int64_t(raw);
      default: MIL_FAIL("GGUF: not an integer type");
    }
  }
  // Any integer type whose value lies in [lo, hi] (converters differ in u32 vs i32 for counts).
  int64_t get_integer(const std::string& key, int64_t lo, int64_t hi, const char* wanted) const {
    const GgufValue& v = value(key);
    if (!gguf_is_integer(v.type)) wrong_type(key, v, wanted);
    int64_t x = integer_value(v.type, v.scalar, key);
    MIL_CHECK(x >= lo && x <= hi, "GGUF '", source_, "': metadata key '", key, "' value ", x,
              " does not fit ", wanted);
    return x;
  }
  template <class Get>
  auto opt(const std::string& key, Get get) const -> std::optional<decltype((this->*get)(key))> {
    if (!has(key)) return std::nullopt;
    return (this->*get)(key);
  }

  // Arrays of arrays deeper than this are rejected (recursion on untrusted input is bounded).
  static constexpr int kMaxArrayDepth = 3;

  GgufValue read_value(detail::GgufCursor& c, GgufType type, int depth) {
    GgufValue v;
    v.type = type;
    if (int64_t w = gguf_scalar_bytes(type)) {
      c.need(w, "the value");
      std::memcpy(&v.scalar, c.here(), size_t(w));
      c.skip(w, "the value");
      if (type == GgufType::boolean && v.scalar > 1) c.fail("bool value " + std::to_string(v.scalar) + " is not 0 or 1");
      return v;
    }
    if (type == GgufType::string) {
      v.str = c.read_string("string value");
      return v;
    }
    if (type != GgufType::array) c.fail("unknown metadata value type " + std::to_string(uint32_t(type)));
    if (depth >= kMaxArrayDepth) c.fail("arrays nested deeper than " + std::to_string(kMaxArrayDepth));
    uint32_t et = c.read<uint32_t>("array element type");
    v.elem_type = GgufType(et);
    v.count = c.read_size("array length");
    // Each element needs at least this many bytes: a count beyond what is left is an error
    // before anything is allocated.
    int64_t w = gguf_scalar_bytes(v.elem_type);
    int64_t min_elem = w ? w : v.elem_type == GgufType::string ? 8 : v.elem_type == GgufType::array ? 12 : 0;
    if (min_elem == 0) c.fail("unknown array element type " + std::to_string(et));
    if (v.count > c.left() / min_elem)
      c.fail("array length " + std::to_string(v.count) + " of " +
             std::string(gguf_type_name(v.elem_type)) + " needs more than the " +
             std::to_string(c.left()) + " bytes left in the file (corrupt or truncated file)");
    if (w) {
      v.raw = c.here();
      c.skip(checked_mul(v.count, w), "array elements");
      if (v.elem_type == GgufType::boolean)
        for (int64_t i = 0; i < v.count; ++i)
          if (v.raw[i] > 1) c.fail("bool array element " + std::to_string(i) + " is not 0 or 1");
    } else if (v.elem_type == GgufType::string) {
      v.strings.reserve(size_t(v.count));
      for (int64_t i = 0; i < v.count; ++i) v.strings.push_back(c.read_string("array string"));
    } else {
      v.items.reserve(size_t(v.count));
      for (int64_t i = 0; i < v.count; ++i) v.items.push_back(read_value(c, GgufType::array, depth + 1));
    }
    return v;
  }

  void parse() {
    detail::GgufCursor c(bytes_.bytes(), source_);
    c.what = "the header";
    c.need(4, "the magic");
    if (std::memcmp(c.here(), "GGUF", 4) != 0)
      c.fail("bad magic (expected \"GGUF\"): this is not a GGUF file");
    c.skip(4, "the magic");
    version_ = c.read<uint32_t>("the version");
    if (version_ != 2 && version_ != 3) {
      MIL_FAIL("GGUF '", source_, "': unsupported GGUF version ", version_,
               " (mil reads versions 2 and 3", version_ == 1 ? "; version 1 is obsolete" : "",
               "): re-convert the model with a current llama.cpp");
    }
    int64_t n_tensors = c.read_size("the tensor count");
    int64_t n_kv = c.read_size("the metadata count");

    // ---- metadata: a key (>= 8 bytes), a type (4), a value (>= 1) ----
    if (n_kv > c.left() / 13)
      c.fail("metadata count " + std::to_string(n_kv) + " is more than the " +
             std::to_string(c.left()) + " bytes left can hold (corrupt file)");
    keys_.reserve(size_t(n_kv));
    for (int64_t i = 0; i < n_kv; ++i) {
      c.what = "metadata entry " + std::to_string(i);
      std::string key(c.read_string("key"));
      c.what += " ('" + key + "')";
      auto type = GgufType(c.read<uint32_t>("value type"));
      GgufValue v = read_value(c, type, 0);
      if (index_.count(key)) c.fail("duplicate metadata key '" + key + "'");
      keys_.push_back(key);
      index_.emplace(std::move(key), std::move(v));
    }
    alignment_ = 32;
    if (has("general.alignment")) {
      const GgufValue& a = index_.at("general.alignment");
      c.what = "metadata 'general.alignment'";
      if (a.type != GgufType::u32) c.fail("general.alignment must be uint32, not " + std::string(gguf_type_name(a.type)));
      alignment_ = int64_t(uint32_t(a.scalar));
      if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) != 0)
        c.fail("general.alignment " + std::to_string(alignment_) + " is not a power of two");
    }

    // ---- tensor infos: name (>= 8), n_dims (4), >= 1 dim (8), type (4), offset (8) ----
    if (n_tensors > c.left() / 32)
      c.fail("tensor count " + std::to_string(n_tensors) + " is more than the " +
             std::to_string(c.left()) + " bytes left can hold (corrupt file)");
    tensors_.reserve(size_t(n_tensors));
    for (int64_t i = 0; i < n_tensors; ++i) {
      c.what = "tensor info " + std::to_string(i);
      TensorInfo t;
      t.name = std::string(c.read_string("name"));
      c.what += " ('" + t.name + "')";
      uint32_t n_dims = c.read<uint32_t>("n_dims");
      if (n_dims == 0 || n_dims > 4) c.fail("n_dims " + std::to_string(n_dims) + " is not in 1..4");
      int64_t numel = 1;
      for (uint32_t d = 0; d < n_dims; ++d) {
        int64_t ne = c.read_size("a dimension");
        if (ne <= 0) c.fail("dimension " + std::to_string(d) + " is 0");
        if (__builtin_mul_overflow(numel, ne, &numel))
          c.fail("the element count overflows (dimensions too large)");
        t.shape.push_back(ne);
      }
      uint32_t type = c.read<uint32_t>("type");
      auto info = ggml_type_info(type);
      if (!info) c.fail("unknown ggml tensor type " + std::to_string(type) + " (file from a newer llama.cpp?)");
      t.type = GgmlType(type);
      if (t.shape[0] % info->block_size != 0)
        c.fail("row length ne[0] = " + std::to_string(t.shape[0]) + " is not a multiple of the " +
               std::string(info->name) + " block size " + std::to_string(info->block_size));
      int64_t blocks = numel / info->block_size;
      if (__builtin_mul_overflow(blocks, info->block_bytes, &t.n_bytes))
        c.fail("the tensor byte size overflows");
      t.offset = c.read_size("offset");
      if (t.offset % alignment_ != 0)
        c.fail("data offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
               std::to_string(alignment_));
      if (tensor_index_.count(t.name)) c.fail("duplicate tensor name '" + t.name + "'");
      tensor_index_.emplace(t.name, tensors_.size());
      tensors_.push_back(std::move(t));
    }

    // ---- the data section: aligned start; every tensor inside the file, none overlapping ----
    int64_t end_of_infos = c.pos();
    data_offset_ = (end_of_infos + alignment_ - 1) / alignment_ * alignment_;  // no overflow: pos < 2^62
    const int64_t size = file_size();
    if (!tensors_.empty() && data_offset_ > size)
      MIL_FAIL("GGUF '", source_, "': file truncated at byte ", size, ": the data section should ",
               "start at byte ", data_offset_, "; re-download the file");
    std::vector<size_t> order(tensors_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return tensors_[a].offset < tensors_[b].offset; });
    int64_t prev_end = 0;
    const TensorInfo* prev = nullptr;
    for (size_t i : order) {
      TensorInfo& t = tensors_[i];
      int64_t begin, end;
      if (__builtin_add_overflow(data_offset_, t.offset, &begin) ||
          __builtin_add_overflow(begin, t.n_bytes, &end) || end > size)
        MIL_FAIL("GGUF '", source_, "': tensor '", t.name, "' (", t.shape_str(), " ",
                 ggml_type_info(uint32_t(t.type))->name, ", ", t.n_bytes, " bytes at data offset ",
                 t.offset, ") ends beyond the end of the file (", size, " bytes): the file is ",
                 "truncated or corrupt; re-download it");
      if (prev && t.offset < prev_end)
        MIL_FAIL("GGUF '", source_, "': tensors '", prev->name, "' and '", t.name,
                 "' overlap in the data section (data offsets ", prev->offset, " and ", t.offset,
                 "): the file is corrupt");
      t.data = bytes_.bytes().data() + begin;
      prev_end = t.offset + t.n_bytes;
      prev = &t;
    }
  }

  std::string source_;
  MappedFile bytes_;
  uint32_t version_ = 0;
  int64_t alignment_ = 32;
  int64_t data_offset_ = 0;
  std::vector<std::string> keys_;
  std::unordered_map<std::string, GgufValue> index_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

// All elements of a tensor as float (types: see dequantize_row).
inline std::vector<float> dequantize(const TensorInfo& t) {
  std::vector<float> out(size_t(t.numel()));
  dequantize_row(t.type, t.data, out.data(), t.numel());
  return out;
}
// Rows [first, first + count) of a tensor (a row is shape[0] elements) into dst.
inline void dequantize_rows(const TensorInfo& t, int64_t first, int64_t count, float* dst) {
  MIL_CHECK(first >= 0 && count >= 0 && first + count <= t.rows(), "dequantize_rows: rows [", first,
            ", ", first + count, ") outside tensor '", t.name, "' of ", t.rows(), " rows");
  dequantize_row(t.type, t.data + first * t.row_bytes(), dst, count * t.shape[0]);
}

}  // namespace mil::io
