#pragma once
// Writing safetensors: one file, or a Hugging Face sharded checkpoint (model-0000i-of-0000n
// shards + model.safetensors.index.json). Every file is written under a temporary name in its
// folder, flushed to disk and renamed, so a crash or an error never leaves a half-written file
// under the real name. Tensors are laid out by descending element size, so with the header
// padded to a multiple of 8 every tensor's data is aligned to its element size.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <numeric>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "../core/dtype.hpp"
#include "safetensors.hpp"

namespace mil::io {

struct SafetensorsEntry {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::F32;
  std::vector<int64_t> shape;
  std::span<const uint8_t> bytes;  // numel * element size bytes, little-endian, row-major
};

namespace detail {

// A file written under a temporary name beside `path`, renamed onto it by commit(); destroyed
// uncommitted (an error), the temporary file is removed.
class AtomicFile {
 public:
  explicit AtomicFile(const std::filesystem::path& path) : path_(path) {
    std::string name = ".";
    name += path.filename().string();
    name += ".tmp-XXXXXX";
    tmp_ = (path.parent_path() / name).string();
    fd_ = ::mkstemp(tmp_.data());
    MIL_CHECK(fd_ >= 0, "cannot create a file in '", path.parent_path().string(), "' (for '",
              path.string(), "'): ", std::strerror(errno));
    ::fchmod(fd_, 0644);  // mkstemp makes 0600; a model file is meant to be shared
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }
  void write(std::span<const uint8_t> b) {
    while (!b.empty()) {
      ssize_t n = ::write(fd_, b.data(), std::min<size_t>(b.size(), size_t(1) << 30));
      if (n < 0 && errno == EINTR) continue;
      MIL_CHECK(n > 0, "error writing '", path_.string(), "': ", std::strerror(errno),
                " (disk full?)");
      b = b.subspan(size_t(n));
    }
  }
  void write(std::string_view s) { write({reinterpret_cast<const uint8_t*>(s.data()), s.size()}); }
  void commit() {
    MIL_CHECK(::fsync(fd_) == 0, "error flushing '", path_.string(), "': ", std::strerror(errno));
    int rc = ::close(fd_);
    fd_ = -1;
    MIL_CHECK(rc == 0, "error closing '", path_.string(), "': ", std::strerror(errno));
    MIL_CHECK(std::rename(tmp_.c_str(), path_.c_str()) == 0, "cannot rename '", tmp_, "' to '",
              path_.string(), "': ", std::strerror(errno));
    committed_ = true;
  }

 private:
  std::filesystem::path path_;
  std::string tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// Validates the entries and builds the padded header; `order` receives the data order.
inline std::string safetensors_header(const std::vector<SafetensorsEntry>& entries,
                                      const std::map<std::string, std::string>& metadata,
                                      const std::string& dest, std::vector<size_t>& order) {
  std::set<std::string_view> names;
  for (const auto& e : entries) {
    MIL_CHECK(!e.name.empty() && e.name != "__metadata__", "safetensors '", dest, "': tensor ",
              "name '", e.name, "' is not allowed");
    MIL_CHECK(names.insert(e.name).second, "safetensors '", dest, "': tensor '", e.name,
              "' is given twice");
    int64_t numel = 1;
    for (int64_t d : e.shape) {
      MIL_CHECK(d >= 0, "safetensors '", dest, "': tensor '", e.name, "' has a negative dimension");
      numel = checked_mul(numel, d);
    }
    const int64_t want = checked_mul(numel, safetensors_dtype_size(e.dtype));
    MIL_CHECK(int64_t(e.bytes.size()) == want, "safetensors '", dest, "': tensor '", e.name,
              "' has ", e.bytes.size(), " bytes, its shape and dtype ",
              safetensors_dtype_name(e.dtype), " need ", want);
  }
  order.resize(entries.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return safetensors_dtype_size(entries[a].dtype) > safetensors_dtype_size(entries[b].dtype);
  });
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  int64_t offset = 0;
  for (size_t i : order) {
    const auto& e = entries[i];
    const int64_t end = checked_add(offset, int64_t(e.bytes.size()));
    h[e.name] = {{"dtype", safetensors_dtype_name(e.dtype)}, {"shape", e.shape},
                 {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string s;
  try {
    s = h.dump();
  } catch (const nlohmann::json::exception& e) {  // names or metadata that are not UTF-8
    MIL_FAIL("safetensors '", dest, "': a tensor name or metadata string is not valid UTF-8 (",
             e.what(), ")");
  }
  s.append((8 - s.size() % 8) % 8, ' ');
  MIL_CHECK(int64_t(s.size()) <= kSafetensorsMaxHeader, "safetensors '", dest, "': the header ",
            "would have ", s.size(), " bytes, more than readers accept (", kSafetensorsMaxHeader,
            ")");
  return s;
}

inline std::string u64_le(uint64_t n) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &n, 8);
  return s;
}

}  // namespace detail

// A small text file (config.json, index.json) written atomically.
inline void write_text_file_atomic(const std::filesystem::path& path, std::string_view text) {
  detail::AtomicFile f(path);
  f.write(text);
  f.commit();
}

// The bytes of a safetensors file (tests, small files).
inline std::vector<uint8_t> serialize_safetensors(
    const std::vector<SafetensorsEntry>& entries,
    const std::map<std::string, std::string>& metadata = {}) {
  std::vector<size_t> order;
  const std::string h = detail::safetensors_header(entries, metadata, "<memory>", order);
  std::string head = detail::u64_le(h.size()) + h;
  std::vector<uint8_t> out(head.begin(), head.end());
  for (size_t i : order) out.insert(out.end(), entries[i].bytes.begin(), entries[i].bytes.end());
  return out;
}

inline void write_safetensors(const std::filesystem::path& path,
                              const std::vector<SafetensorsEntry>& entries,
                              const std::map<std::string, std::string>& metadata = {}) {
  std::vector<size_t> order;
  const std::string h = detail::safetensors_header(entries, metadata, path.string(), order);
  detail::AtomicFile f(path);
  f.write(detail::u64_le(h.size()));
  f.write(h);
  for (size_t i : order) f.write(entries[i].bytes);
  f.commit();
}

// Writes `entries` into `dir` as Hugging Face does: model.safetensors when all fit in
// max_shard_bytes, else consecutive groups of at most max_shard_bytes (a larger tensor gets a
// shard of its own) as model-00001-of-0000n.safetensors + model.safetensors.index.json. Files of
// an earlier save in the folder that would contradict this one (the other layout, shards of
// another count) are removed afterwards, as transformers' save_pretrained does. Returns the
// names of the weight files written.
inline std::vector<std::string> write_safetensors_sharded(
    const std::filesystem::path& dir, const std::vector<SafetensorsEntry>& entries,
    int64_t max_shard_bytes, const std::map<std::string, std::string>& metadata = {}) {
  namespace fs = std::filesystem;
  MIL_CHECK(max_shard_bytes > 0, "write_safetensors_sharded: max_shard_bytes must be positive");
  std::error_code ec;
  fs::create_directories(dir, ec);
  MIL_CHECK(fs::is_directory(dir), "cannot create the folder '", dir.string(), "': ", ec.message());

  std::set<std::string_view> names;  // each shard checks its own; a name in two shards is also bad
  for (const auto& e : entries)
    MIL_CHECK(names.insert(e.name).second, "safetensors checkpoint '", dir.string(), "': tensor '",
              e.name, "' is given twice");
  std::vector<std::vector<SafetensorsEntry>> shards(1);
  int64_t in_shard = 0, total = 0;
  for (const auto& e : entries) {
    const int64_t n = int64_t(e.bytes.size());
    if (!shards.back().empty() && in_shard + n > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(e);
    in_shard += n;
    total = checked_add(total, n);
  }
  std::vector<std::string> written;
  const std::string single = SafetensorsCheckpoint::kSingleName;
  const std::string index = SafetensorsCheckpoint::kIndexName;
  if (shards.size() == 1) {
    write_safetensors(dir / single, shards[0], metadata);
    written.push_back(single);
  } else {
    nlohmann::ordered_json wm = nlohmann::ordered_json::object();
    char name[64];
    for (size_t s = 0; s < shards.size(); ++s) {
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
      write_safetensors(dir / name, shards[s], metadata);
      written.push_back(name);
      for (const auto& e : shards[s]) wm[e.name] = name;
    }
    nlohmann::ordered_json j = {{"metadata", {{"total_size", total}}}, {"weight_map", wm}};
    write_text_file_atomic(dir / index, j.dump(2) + "\n");
  }
  // Remove what an earlier save left that would now contradict this one.
  const std::set<std::string> keep(written.begin(), written.end());
  auto digits = [](std::string_view v) {
    return std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  auto stale = [&](const std::string& f) {
    if (keep.count(f)) return false;
    if (f == single || (f == index && shards.size() == 1)) return true;
    std::string_view v(f);  // model-DDDDD-of-DDDDD.safetensors
    return v.size() == 32 && v.starts_with("model-") && digits(v.substr(6, 5)) &&
           v.substr(11, 4) == "-of-" && digits(v.substr(15, 5)) && v.ends_with(".safetensors");
  };
  std::vector<fs::path> old;  // collected first: no removal while the folder is being read
  for (const auto& de : fs::directory_iterator(dir, ec))
    if (de.is_regular_file(ec) && stale(de.path().filename().string())) old.push_back(de.path());
  for (const auto& p : old) fs::remove(p, ec);
  return written;
}

// Float tensors written as F32, BF16 or F16 (rounded to nearest even): the common path for any
// model whose weights live in float on the host.
struct FloatTensorRef {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;  // numel floats
};

inline std::vector<std::string> write_float_safetensors(
    const std::filesystem::path& dir, const std::vector<FloatTensorRef>& tensors,
    SafetensorsDtype dtype, int64_t max_shard_bytes,
    const std::map<std::string, std::string>& metadata = {}) {
  MIL_CHECK(dtype == SafetensorsDtype::F32 || dtype == SafetensorsDtype::BF16 ||
                dtype == SafetensorsDtype::F16,
            "write_float_safetensors: dtype ", safetensors_dtype_name(dtype),
            " is not F32, BF16 or F16");
  std::vector<std::vector<uint16_t>> rounded;  // 16-bit copies (F32 is written from the source)
  rounded.reserve(tensors.size());
  std::vector<SafetensorsEntry> entries;
  for (const auto& t : tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n = checked_mul(n, d);
    SafetensorsEntry e{t.name, dtype, t.shape, {}};
    if (dtype == SafetensorsDtype::F32) {
      e.bytes = {reinterpret_cast<const uint8_t*>(t.data), size_t(n) * 4};
    } else {
      auto& r = rounded.emplace_back(size_t(n));
      for (int64_t i = 0; i < n; ++i)
        r[size_t(i)] = dtype == SafetensorsDtype::BF16 ? bf16::from_float(t.data[i])
                                                       : fp16::from_float(t.data[i]);
      e.bytes = {reinterpret_cast<const uint8_t*>(r.data()), size_t(n) * 2};
    }
    entries.push_back(std::move(e));
  }
  return write_safetensors_sharded(dir, entries, max_shard_bytes, metadata);
}

}  // namespace mil::io
