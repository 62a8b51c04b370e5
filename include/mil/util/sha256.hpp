#pragma once
// SHA-256 (FIPS 180-4, section 6.2), streaming: identifies the exact bytes of a model or a data
// file (a dataset records the hash of the teacher that labelled it). Plus helpers that hash a
// file, and a model that is one file or a folder of files, reading in blocks of 1 MiB.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../core/error.hpp"

namespace mil::util {

class Sha256 {
 public:
  using Digest = std::array<uint8_t, 32>;

  Sha256() { reset(); }

  void reset() {
    // FIPS 180-4 5.3.3: the first 32 bits of the fractional parts of the square roots of the
    // first eight primes.
    h_ = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
          0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    buffered_ = 0;
    length_ = 0;
  }

  void update(std::span<const uint8_t> bytes) {
    length_ += bytes.size();
    if (buffered_) {
      const size_t n = std::min(bytes.size(), block_.size() - buffered_);
      std::memcpy(block_.data() + buffered_, bytes.data(), n);
      buffered_ += n;
      bytes = bytes.subspan(n);
      if (buffered_ < block_.size()) return;
      compress(block_.data());
      buffered_ = 0;
    }
    for (; bytes.size() >= 64; bytes = bytes.subspan(64)) compress(bytes.data());
    std::memcpy(block_.data(), bytes.data(), bytes.size());
    buffered_ = bytes.size();
  }
  void update(std::string_view s) { update({reinterpret_cast<const uint8_t*>(s.data()), s.size()}); }
  // A value's little-endian bytes (for hashing structured data unambiguously).
  template <class V>
    requires std::is_arithmetic_v<V>
  void update_value(V v) {
    uint8_t b[sizeof(V)];
    std::memcpy(b, &v, sizeof(V));
    update(std::span<const uint8_t>(b, sizeof(V)));
  }

  // The digest of everything given since the last reset; resets afterwards.
  Digest finish() {
    // 5.1.1: a 1 bit, zeros up to 56 bytes mod 64, then the message length in bits, big-endian.
    const uint64_t bits = length_ * 8;
    const uint8_t one = 0x80, zero = 0;
    update(std::span(&one, 1));
    while (buffered_ != 56) update(std::span(&zero, 1));
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = uint8_t(bits >> (56 - 8 * i));
    update(std::span<const uint8_t>(len, 8));
    Digest d;
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j < 4; ++j) d[size_t(4 * i + j)] = uint8_t(h_[size_t(i)] >> (24 - 8 * j));
    reset();
    return d;
  }
  std::string finish_hex() { return to_hex(finish()); }

  static std::string to_hex(const Digest& d) {
    static const char* digits = "0123456789abcdef";
    std::string s;
    for (uint8_t b : d) {
      s += digits[b >> 4];
      s += digits[b & 15];
    }
    return s;
  }

 private:
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

  // 6.2.2: one 512-bit block.
  void compress(const uint8_t* p) {
    // 4.2.2: the first 32 bits of the fractional parts of the cube roots of the first 64 primes.
    static constexpr uint32_t K[64] = {
        0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u,
        0xab1c5ed5u, 0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu,
        0x9bdc06a7u, 0xc19bf174u, 0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu,
        0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau, 0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u,
        0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u, 0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu,
        0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u, 0xa2bfe8a1u, 0xa81a664bu,
        0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u, 0x19a4c116u,
        0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
        0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u,
        0xc67178f2u};
    uint32_t w[64];
    for (int t = 0; t < 16; ++t)
      w[t] = uint32_t(p[4 * t]) << 24 | uint32_t(p[4 * t + 1]) << 16 |
             uint32_t(p[4 * t + 2]) << 8 | uint32_t(p[4 * t + 3]);
    for (int t = 16; t < 64; ++t) {
      const uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
      const uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
      w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int t = 0; t < 64; ++t) {
      const uint32_t S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
      const uint32_t ch = (e & f) ^ (~e & g);
      const uint32_t t1 = h + S1 + ch + K[t] + w[t];
      const uint32_t S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
      const uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
      const uint32_t t2 = S0 + maj;
      h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h_[0] += a, h_[1] += b, h_[2] += c, h_[3] += d, h_[4] += e, h_[5] += f, h_[6] += g, h_[7] += h;
  }

  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> block_;
  size_t buffered_ = 0;
  uint64_t length_ = 0;  // bytes
};

inline std::string sha256_hex(std::string_view bytes) {
  Sha256 h;
  h.update(bytes);
  return h.finish_hex();
}

// Feeds the bytes of a file into `h`.
inline void sha256_update_file(Sha256& h, const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  MIL_CHECK(in.good(), "cannot open '", path.string(), "' to hash it");
  std::vector<char> buf(size_t(1) << 20);
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    h.update(std::string_view(buf.data(), size_t(in.gcount())));
  }
  MIL_CHECK(!in.bad(), "error reading '", path.string(), "' to hash it");
}

inline std::string sha256_file(const std::filesystem::path& path) {
  Sha256 h;
  sha256_update_file(h, path);
  return h.finish_hex();
}

// Whether a file of a model folder determines the model: its weights (*.safetensors, *.gguf,
// *.bin) and the configuration that gives them meaning (config.json, mamba_config.json).
// Tokenizer files are left out: a dataset identifies its tokenizer separately.
inline bool is_model_file(const std::filesystem::path& p) {
  const std::string ext = p.extension().string(), name = p.filename().string();
  return ext == ".safetensors" || ext == ".gguf" || ext == ".bin" || name == "config.json" ||
         name == "mamba_config.json";
}

// The hash of a model: of the file itself, or for a folder, of its model files (is_model_file) in
// sorted name order, each as its name, a NUL byte, its size (8 bytes, little-endian) and its
// bytes (so that moving bytes from one file to the next changes the hash).
inline std::string sha256_model(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    MIL_CHECK(fs::is_regular_file(path, ec), "cannot hash '", path.string(),
              "': not a file or a folder");
    return sha256_file(path);
  }
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(path))
    if (e.is_regular_file() && is_model_file(e.path())) files.push_back(e.path());
  const bool weights = std::any_of(files.begin(), files.end(), [](const fs::path& f) {
    return f.extension() != ".json";
  });
  MIL_CHECK(weights, "cannot hash the model folder '", path.string(),
            "': it holds no weight files (*.safetensors, *.gguf, *.bin)");
  std::sort(files.begin(), files.end(),
            [](const fs::path& a, const fs::path& b) { return a.filename() < b.filename(); });
  Sha256 h;
  for (const fs::path& f : files) {
    h.update(f.filename().string());
    h.update_value(uint8_t(0));
    h.update_value(uint64_t(fs::file_size(f)));
    sha256_update_file(h, f);
  }
  return h.finish_hex();
}

}  // namespace mil::util
