#pragma once
// A safetensors reader (Hugging Face's weight format): one file, memory-mapped (or parsed from a
// copied buffer), or a checkpoint folder of one file or of shards listed in
// model.safetensors.index.json. Everything is validated before use, as the official library
// does and a little more: the header length, the header as strict JSON (duplicate keys are an
// error), every dtype, shape (overflow-checked) and data range, the ranges tiling the data
// section exactly (no overlap, no hole), and shard names in an index (no path traversal).
//
// Layout: u64 little-endian N; N bytes of UTF-8 JSON {"__metadata__": {str: str} (optional),
// name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...} (writers pad it with
// spaces to a multiple of 8); the data section, offsets relative to its start, row-major.
#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "dequantize.hpp"
#include "json.hpp"
#include "limits.hpp"
#include "mapped_file.hpp"

namespace mil::io {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

// The official dtypes of whole bytes (the packed sub-byte F4 and F6 types are not read).
enum class SafetensorsDtype : uint8_t {
  BOOL, U8, I8, F8_E5M2, F8_E4M3, F8_E5M2FNUZ, F8_E4M3FNUZ, F8_E8M0, I16, U16, F16, BF16, I32, U32,
  F32, F64, I64, U64, C64,
};

namespace detail {
struct StDtypeInfo {
  SafetensorsDtype dtype;
  std::string_view name;
  int64_t size;
};
inline constexpr StDtypeInfo kStDtypes[] = {
    {SafetensorsDtype::BOOL, "BOOL", 1}, {SafetensorsDtype::U8, "U8", 1},
    {SafetensorsDtype::I8, "I8", 1},     {SafetensorsDtype::F8_E5M2, "F8_E5M2", 1},
    {SafetensorsDtype::F8_E4M3, "F8_E4M3", 1},
    {SafetensorsDtype::F8_E5M2FNUZ, "F8_E5M2FNUZ", 1},
    {SafetensorsDtype::F8_E4M3FNUZ, "F8_E4M3FNUZ", 1},
    {SafetensorsDtype::F8_E8M0, "F8_E8M0", 1}, {SafetensorsDtype::I16, "I16", 2},
    {SafetensorsDtype::U16, "U16", 2},   {SafetensorsDtype::F16, "F16", 2},
    {SafetensorsDtype::BF16, "BF16", 2}, {SafetensorsDtype::I32, "I32", 4},
    {SafetensorsDtype::U32, "U32", 4},   {SafetensorsDtype::F32, "F32", 4},
    {SafetensorsDtype::F64, "F64", 8},   {SafetensorsDtype::I64, "I64", 8},
    {SafetensorsDtype::U64, "U64", 8},   {SafetensorsDtype::C64, "C64", 8},
};
}  // namespace detail

inline std::string_view safetensors_dtype_name(SafetensorsDtype d) {
  return detail::kStDtypes[size_t(d)].name;
}
inline int64_t safetensors_dtype_size(SafetensorsDtype d) {
  return detail::kStDtypes[size_t(d)].size;
}
inline std::optional<SafetensorsDtype> safetensors_dtype_from_name(std::string_view name) {
  for (const auto& i : detail::kStDtypes)
    if (i.name == name) return i.dtype;
  return std::nullopt;
}

// The official reader's limit: a larger header is a corrupt file, not a big model.
inline constexpr int64_t kSafetensorsMaxHeader = 100'000'000;

struct SafetensorsTensor {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::F32;
  std::vector<int64_t> shape;      // row-major, outermost first (PyTorch order)
  std::span<const uint8_t> data;   // numel * element size bytes, inside the file's mapping
  std::string source;              // the file, for error messages

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;  // validated against overflow when the file was opened
    return n;
  }
  std::string shape_str() const {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
};

// All elements of a floating-point tensor (F32, F16, BF16, F64) as float into dst[numel()].
inline void to_float(const SafetensorsTensor& t, float* dst) {
  const uint8_t* p = t.data.data();
  const int64_t n = t.numel();
  switch (t.dtype) {
    case SafetensorsDtype::F32:
      if (n) std::memcpy(dst, p, size_t(n) * 4);  // the data may be unaligned: copy bytes
      return;
    case SafetensorsDtype::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = detail::load_f16(p + 2 * i);
      return;
    case SafetensorsDtype::BF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = detail::load_bf16(p + 2 * i);
      return;
    case SafetensorsDtype::F64:
      for (int64_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        dst[i] = float(d);
      }
      return;
    default:
      MIL_FAIL("safetensors '", t.source, "': tensor '", t.name, "' has dtype ",
               safetensors_dtype_name(t.dtype), ", not a floating-point type (F32, F16, BF16 or ",
               "F64): it cannot be read as weights");
  }
}
inline std::vector<float> to_float(const SafetensorsTensor& t) {
  std::vector<float> out(size_t(t.numel()));
  to_float(t, out.data());
  return out;
}

class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path) {
    SafetensorsFile f;
    f.source_ = path;
    f.bytes_ = MappedFile::open(path);
    f.parse();
    return f;
  }
  // Parses a copy of `bytes` (tests, fuzzing, files already in memory).
  static SafetensorsFile from_bytes(std::span<const uint8_t> bytes, std::string name = "<memory>") {
    SafetensorsFile f;
    f.source_ = std::move(name);
    f.bytes_ = MappedFile::copy_of(bytes);
    f.parse();
    return f;
  }

  const std::string& source() const { return source_; }
  int64_t header_length() const { return header_len_; }
  int64_t file_size() const { return int64_t(bytes_.size()); }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // In data-section order.
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const SafetensorsTensor* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }
  const SafetensorsTensor& tensor(const std::string& name) const {
    const SafetensorsTensor* t = find(name);
    MIL_CHECK(t, "safetensors '", source_, "': tensor '", name, "' is missing: the file is not ",
              "a complete model of the expected architecture");
    return *t;
  }

 private:
  SafetensorsFile() = default;

  [[noreturn]] void fail(const std::string& msg) const {
    MIL_FAIL("safetensors '", source_, "': ", msg);
  }
  // A JSON integer in [0, INT64_MAX], or an error naming `field`.
  int64_t size_value(const nlohmann::json& v, const std::string& field) const {
    if (v.is_number_unsigned() && v.get<uint64_t>() <= uint64_t(INT64_MAX))
      return int64_t(v.get<uint64_t>());
    if (v.is_number_integer() && !v.is_number_unsigned())
      fail(field + " is negative (" + json_excerpt(v) + "): the header is corrupt");
    fail(field + " must be a non-negative integer below 2^63, not " + json_excerpt(v) +
         ": the header is corrupt");
  }

  void parse_metadata(const nlohmann::json& m) {
    if (m.is_null()) return;
    if (!m.is_object())
      fail("__metadata__ must be an object of strings, not " + json_excerpt(m));
    for (const auto& [k, v] : m.items()) {
      if (!v.is_string())
        fail("__metadata__ value of \"" + k + "\" must be a string, not " + json_excerpt(v));
      metadata_.emplace(k, v.get<std::string>());
    }
  }

  // One header entry; its data is a view of `data` (the data section).
  SafetensorsTensor parse_tensor(const std::string& name, const nlohmann::json& e,
                                 std::span<const uint8_t> data) const {
    const int64_t data_size = int64_t(data.size());
    const std::string what = "tensor '" + name + "'";
    if (!e.is_object()) fail(what + " must be an object {dtype, shape, data_offsets}, not " +
                             json_excerpt(e));
    for (const auto& [k, v] : e.items())
      if (k != "dtype" && k != "shape" && k != "data_offsets")
        fail(what + " has the unexpected field \"" + k + "\" (only dtype, shape and data_offsets "
             "are allowed)");
    auto field = [&](const char* k) -> const nlohmann::json& {
      auto it = e.find(k);
      if (it == e.end()) fail(what + " has no \"" + k + "\" field");
      return *it;
    };
    SafetensorsTensor t;
    t.name = name;
    t.source = source_;
    const auto& dt = field("dtype");
    if (!dt.is_string()) fail(what + ": dtype must be a string, not " + json_excerpt(dt));
    const auto& dts = dt.get_ref<const std::string&>();
    auto d = safetensors_dtype_from_name(dts);
    if (!d) {
      const std::string shown = dts.size() > 40 ? dts.substr(0, 40) + "..." : dts;
      const bool known = dts == "F4" || dts == "F6_E2M3" || dts == "F6_E3M2";
      fail(what + (known ? " has the dtype \"" + shown + "\", which mil does not read"
                         : " has the unknown dtype \"" + shown + "\" (corrupt header?)") +
           "; mil reads BOOL, U8, I8, U16, I16, U32, I32, U64, I64, F16, BF16, F32, F64, C64 "
           "and the F8 types");
    }
    t.dtype = *d;
    const auto& sh = field("shape");
    if (!sh.is_array()) fail(what + ": shape must be an array, not " + json_excerpt(sh));
    int64_t numel = 1;
    for (size_t i = 0; i < sh.size(); ++i) {
      int64_t dim = size_value(sh[i], what + " shape[" + std::to_string(i) + "]");
      if (__builtin_mul_overflow(numel, dim, &numel))
        fail(what + ": the element count of shape " + json_excerpt(sh) + " overflows");
      t.shape.push_back(dim);
    }
    int64_t nbytes;
    if (__builtin_mul_overflow(numel, safetensors_dtype_size(t.dtype), &nbytes))
      fail(what + ": the byte size of shape " + json_excerpt(sh) + " overflows");
    const auto& off = field("data_offsets");
    if (!off.is_array() || off.size() != 2)
      fail(what + ": data_offsets must be [begin, end], not " + json_excerpt(off));
    const int64_t begin = size_value(off[0], what + " data_offsets[0]");
    int64_t end = size_value(off[1], what + " data_offsets[1]");
    if (begin > end)
      fail(what + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
           "] are reversed (begin > end): the header is corrupt");
    if (end > data_size)
      fail(what + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
           "] extend beyond the data section of " + std::to_string(data_size) +
           " bytes: the file is truncated; re-download it");
    if (end - begin != nbytes)
      fail(what + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
           "] hold " + std::to_string(end - begin) + " bytes but shape " + t.shape_str() + " of " +
           dts + " needs " + std::to_string(nbytes) + ": the header is corrupt");
    t.data = data.subspan(size_t(begin), size_t(nbytes));
    return t;
  }

  void parse() {
    const auto b = bytes_.bytes();
    const int64_t size = int64_t(b.size());
    if (size < 8)
      fail("the file has " + std::to_string(size) + " bytes, fewer than the 8-byte header "
           "length: it is truncated or not a safetensors file");
    uint64_t n;
    std::memcpy(&n, b.data(), 8);
    if (n > uint64_t(kSafetensorsMaxHeader))
      fail("header length " + std::to_string(n) + " exceeds the limit of " +
           std::to_string(kSafetensorsMaxHeader) + " bytes: not a safetensors file, or corrupt");
    if (int64_t(n) > size - 8)
      fail("header length " + std::to_string(n) + " exceeds the " + std::to_string(size - 8) +
           " bytes after it: the file is truncated; re-download it");
    header_len_ = int64_t(n);
    std::string_view text(reinterpret_cast<const char*>(b.data()) + 8, size_t(n));
    const nlohmann::json h = parse_json_strict(text, "safetensors '" + source_ + "': header");
    if (!h.is_object()) fail("the header is JSON but not an object: " + json_excerpt(h));

    const auto data = b.subspan(size_t(8 + header_len_));
    const int64_t data_size = int64_t(data.size());
    tensors_.reserve(h.size());
    for (const auto& [name, e] : h.items()) {
      if (name == "__metadata__") parse_metadata(e);
      else tensors_.push_back(parse_tensor(name, e, data));
    }
    // The ranges must tile the data section in order (the official reader rejects overlaps,
    // holes and unused trailing bytes alike): sort by (begin, end), then walk.
    auto begin_of = [&](const SafetensorsTensor& t) { return t.data.data() - data.data(); };
    std::sort(tensors_.begin(), tensors_.end(), [&](const auto& x, const auto& y) {
      auto bx = begin_of(x), by = begin_of(y);
      if (bx != by) return bx < by;
      if (x.data.size() != y.data.size()) return x.data.size() < y.data.size();
      return x.name < y.name;
    });
    int64_t pos = 0;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const SafetensorsTensor& t = tensors_[i];
      const int64_t begin = int64_t(begin_of(t));
      if (begin < pos)
        fail("tensors '" + tensors_[i - 1].name + "' and '" + t.name + "' overlap in the data "
             "section ('" + t.name + "' begins at " + std::to_string(begin) + ", before the end " +
             std::to_string(pos) + " of the other): the header is corrupt");
      if (begin > pos)
        fail("bytes [" + std::to_string(pos) + ", " + std::to_string(begin) + ") of the data "
             "section belong to no tensor (a hole before '" + t.name + "'): the header is corrupt");
      pos = begin + int64_t(t.data.size());
    }
    if (pos != data_size)  // (no tensor ends beyond the data: checked per tensor)
      fail("the last " + std::to_string(data_size - pos) + " bytes of the data section belong to "
           "no tensor (the tensors end at " + std::to_string(pos) + "): the header is corrupt");
    for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  }

  std::string source_;
  MappedFile bytes_;
  int64_t header_len_ = 0;
  std::map<std::string, std::string> metadata_;
  std::vector<SafetensorsTensor> tensors_;
  std::unordered_map<std::string, size_t> index_;
};

// A Hugging Face checkpoint: a folder holding model.safetensors or model.safetensors.index.json
// (+ its shards), or one of those files named directly. Shards are opened once each; the index
// and the shards must agree exactly (each listed tensor in its shard, no tensor in two shards,
// no shard tensor the index does not list).
class SafetensorsCheckpoint {
 public:
  static constexpr const char* kSingleName = "model.safetensors";
  static constexpr const char* kIndexName = "model.safetensors.index.json";

  static SafetensorsCheckpoint open(const std::filesystem::path& dir_or_file) {
    namespace fs = std::filesystem;
    const std::string p = dir_or_file.string();
    std::error_code ec;
    SafetensorsCheckpoint c;
    c.source_ = p;
    if (fs::is_directory(dir_or_file, ec)) {
      // A single file wins over an index, as in transformers.
      if (fs::is_regular_file(dir_or_file / kSingleName, ec)) {
        c.add_file((dir_or_file / kSingleName).string());
      } else if (fs::is_regular_file(dir_or_file / kIndexName, ec)) {
        c.open_index(dir_or_file / kIndexName);
      } else {
        MIL_FAIL("folder '", p, "' has neither ", kSingleName, " nor ", kIndexName,
                 ": not a Hugging Face safetensors checkpoint (or the download is incomplete)");
      }
    } else {
      MIL_CHECK(fs::exists(dir_or_file, ec), "safetensors checkpoint '", p, "' not found");
      if (p.ends_with(".json")) c.open_index(dir_or_file);
      else c.add_file(p);
    }
    c.build_index();
    return c;
  }

  const std::string& source() const { return source_; }
  const std::vector<SafetensorsFile>& files() const { return files_; }
  // __metadata__ of the first file (transformers writes {"format": "pt"} into every shard).
  const std::map<std::string, std::string>& metadata() const { return files_.front().metadata(); }

  // Shard by shard, each in data order.
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const SafetensorsTensor* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }
  const SafetensorsTensor& tensor(const std::string& name) const {
    const SafetensorsTensor* t = find(name);
    MIL_CHECK(t, "safetensors checkpoint '", source_, "': tensor '", name, "' is missing: the ",
              "checkpoint is not a complete model of the expected architecture");
    return *t;
  }

 private:
  void add_file(const std::string& path) { files_.push_back(SafetensorsFile::open(path)); }

  void open_index(const std::filesystem::path& index_path) {
    const std::string ip = index_path.string();
    const nlohmann::json j = read_json_file_strict(index_path);
    auto bad = [&](const std::string& msg) { MIL_FAIL("safetensors index '", ip, "': ", msg); };
    if (!j.is_object()) bad("not a JSON object");
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object() || wm->empty())
      bad("no \"weight_map\" object of tensor names to shard files");
    if (auto m = j.find("metadata"); m != j.end() && !m->is_null() && !m->is_object())
      bad("\"metadata\" must be an object, not " + json_excerpt(*m));
    // The shard count, before any shard is opened (each is one mapping).
    std::set<std::string_view> distinct;
    for (const auto& [name, v] : wm->items())
      if (v.is_string()) distinct.insert(v.get_ref<const std::string&>());
    if (int64_t(distinct.size()) > limits::kMaxShards)
      bad("it names " + std::to_string(distinct.size()) + " shards, more than mil's limit of " +
          std::to_string(limits::kMaxShards) + " (io/limits.hpp): the index is corrupt or hostile");
    std::unordered_map<std::string, size_t> shard_of_file;
    for (const auto& [name, v] : wm->items()) {
      if (!v.is_string())
        bad("weight_map[\"" + name + "\"] must be a file name string, not " + json_excerpt(v));
      const auto& f = v.get_ref<const std::string&>();
      // Plain names only: the index must not reach outside its folder.
      if (f.empty() || f == "." || f == ".." || f.find_first_of(std::string("/\\\0", 3)) !=
                                                   std::string::npos)
        bad("shard name " + json_excerpt(v) + " of tensor '" + name + "' is not a plain file "
            "name in the index's folder (path separators and '..' are not allowed)");
      if (!shard_of_file.count(f)) {
        const auto path = index_path.parent_path() / f;
        std::error_code ec;
        if (!std::filesystem::is_regular_file(path, ec))
          bad("shard '" + f + "' (of tensor '" + name + "') is missing from the folder: the "
              "download is incomplete");
        shard_of_file.emplace(f, files_.size());
        add_file(path.string());
        shard_names_.push_back(f);
      }
      listed_.emplace(name, shard_of_file.at(f));
    }
  }

  void build_index() {
    for (size_t s = 0; s < files_.size(); ++s) {
      for (const auto& t : files_[s].tensors()) {
        if (auto it = index_.find(t.name); it != index_.end())
          MIL_FAIL("safetensors checkpoint '", source_, "': tensor '", t.name, "' is in both '",
                   tensors_[it->second].source, "' and '", t.source, "': the shards are ",
                   "inconsistent");
        if (!listed_.empty()) {
          auto l = listed_.find(t.name);
          MIL_CHECK(l != listed_.end(), "safetensors checkpoint '", source_, "': shard '",
                    shard_names_[s], "' holds tensor '", t.name, "' that the index does not ",
                    "list: the index is stale or belongs to another checkpoint");
          MIL_CHECK(l->second == s, "safetensors checkpoint '", source_, "': tensor '", t.name,
                    "' is in shard '", shard_names_[s], "' but the index lists it in '",
                    shard_names_[l->second], "'");
        }
        index_.emplace(t.name, tensors_.size());
        tensors_.push_back(t);
      }
    }
    for (const auto& [name, s] : listed_)
      MIL_CHECK(index_.count(name), "safetensors checkpoint '", source_, "': tensor '", name,
                "' is listed in the index for shard '", shard_names_[s], "' but that shard ",
                "does not hold it: the shard is from another checkpoint or truncated");
  }

  std::string source_;
  std::vector<SafetensorsFile> files_;
  std::vector<std::string> shard_names_;               // index order (empty for one file)
  std::unordered_map<std::string, size_t> listed_;     // index: tensor -> shard
  std::vector<SafetensorsTensor> tensors_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace mil::io
