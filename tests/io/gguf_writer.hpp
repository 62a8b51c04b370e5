#pragma once
// A small GGUF writer for tests: builds files in memory (valid ones, and bad ones through the
// overrides: raw metadata values, forced counts, dims, types and offsets).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <mil/io/gguf.hpp>

namespace mil::test {

using Bytes = std::vector<uint8_t>;

inline void put_u32(Bytes& b, uint32_t v) { b.insert(b.end(), (uint8_t*)&v, (uint8_t*)&v + 4); }
inline void put_u64(Bytes& b, uint64_t v) { b.insert(b.end(), (uint8_t*)&v, (uint8_t*)&v + 8); }
inline void put_str(Bytes& b, const std::string& s) {
  put_u64(b, s.size());
  b.insert(b.end(), s.begin(), s.end());
}
template <class T>
void put(Bytes& b, T v) {
  b.insert(b.end(), (uint8_t*)&v, (uint8_t*)&v + sizeof(T));
}

struct GgufWriter {
  struct Kv {
    std::string key;
    uint32_t type;
    Bytes payload;  // the encoded value after the type
  };
  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims;  // ggml order
    uint32_t type;
    Bytes data;
    std::optional<uint64_t> offset;  // forced offset; else placed after the previous tensor
  };
  uint32_t version = 3;
  uint32_t alignment = 32;  // used for placing data; write general.alignment yourself to change it
  std::optional<uint64_t> tensor_count, kv_count;  // forced header counts
  std::vector<Kv> kvs;
  std::vector<Tensor> tensors;

  using T = io::GgufType;
  GgufWriter& raw(const std::string& key, uint32_t type, Bytes payload) {
    kvs.push_back({key, type, std::move(payload)});
    return *this;
  }
  template <class V>
  GgufWriter& scalar(const std::string& key, T type, V v) {
    Bytes b;
    put(b, v);
    return raw(key, uint32_t(type), b);
  }
  GgufWriter& u32(const std::string& k, uint32_t v) { return scalar(k, T::u32, v); }
  GgufWriter& f32(const std::string& k, float v) { return scalar(k, T::f32, v); }
  GgufWriter& boolean(const std::string& k, bool v) { return scalar(k, T::boolean, uint8_t(v)); }
  GgufWriter& str(const std::string& k, const std::string& v) {
    Bytes b;
    put_str(b, v);
    return raw(k, uint32_t(T::string), b);
  }
  GgufWriter& str_array(const std::string& k, const std::vector<std::string>& v) {
    Bytes b;
    put_u32(b, uint32_t(T::string));
    put_u64(b, v.size());
    for (const auto& s : v) put_str(b, s);
    return raw(k, uint32_t(T::array), b);
  }
  template <class V>
  GgufWriter& num_array(const std::string& k, T elem, const std::vector<V>& v) {
    Bytes b;
    put_u32(b, uint32_t(elem));
    put_u64(b, v.size());
    for (V x : v) put(b, x);
    return raw(k, uint32_t(T::array), b);
  }
  GgufWriter& tensor(const std::string& name, std::vector<uint64_t> dims, io::GgmlType type,
                     Bytes data, std::optional<uint64_t> offset = std::nullopt) {
    tensors.push_back({name, std::move(dims), uint32_t(type), std::move(data), offset});
    return *this;
  }
  GgufWriter& f32_tensor(const std::string& name, std::vector<uint64_t> dims,
                         const std::vector<float>& v) {
    Bytes b(v.size() * 4);
    std::memcpy(b.data(), v.data(), b.size());
    return tensor(name, std::move(dims), io::GgmlType::F32, std::move(b));
  }

  Bytes bytes() const {
    Bytes b = {'G', 'G', 'U', 'F'};
    put_u32(b, version);
    put_u64(b, tensor_count.value_or(tensors.size()));
    put_u64(b, kv_count.value_or(kvs.size()));
    for (const auto& kv : kvs) {
      put_str(b, kv.key);
      put_u32(b, kv.type);
      b.insert(b.end(), kv.payload.begin(), kv.payload.end());
    }
    std::vector<uint64_t> offsets;
    uint64_t next = 0;
    for (const auto& t : tensors) {
      offsets.push_back(next);
      next = (next + t.data.size() + alignment - 1) / alignment * alignment;
    }
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& t = tensors[i];
      put_str(b, t.name);
      put_u32(b, uint32_t(t.dims.size()));
      for (uint64_t d : t.dims) put_u64(b, d);
      put_u32(b, t.type);
      put_u64(b, t.offset.value_or(offsets[i]));
    }
    if (tensors.empty()) return b;
    b.resize((b.size() + alignment - 1) / alignment * alignment, 0);
    size_t data_start = b.size();
    for (size_t i = 0; i < tensors.size(); ++i) {
      b.resize(data_start + offsets[i], 0);
      b.insert(b.end(), tensors[i].data.begin(), tensors[i].data.end());
    }
    return b;
  }
};

// Writes bytes to a fresh temporary file and removes it when destroyed.
struct TempFile {
  std::string path;
  explicit TempFile(const Bytes& b) {
    char name[] = "/tmp/mil_gguf_test_XXXXXX";
    int fd = mkstemp(name);
    MIL_CHECK(fd >= 0, "mkstemp failed");
    path = name;
    FILE* f = fdopen(fd, "wb");
    std::fwrite(b.data(), 1, b.size(), f);
    std::fclose(f);
  }
  ~TempFile() { std::remove(path.c_str()); }
};

}  // namespace mil::test
