#pragma once
// The bytes of a file, memory-mapped read-only, or an owned copy of a buffer (parsing from memory,
// fuzzing). Move-only; the bytes stay at the same address for the object's lifetime, so views into
// them stay valid when the object is moved.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "../core/error.hpp"

namespace mil::io {

class MappedFile {
 public:
  MappedFile() = default;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& o) noexcept { *this = std::move(o); }
  MappedFile& operator=(MappedFile&& o) noexcept {
    if (this != &o) {
      release();
      map_ = std::exchange(o.map_, nullptr);
      size_ = std::exchange(o.size_, 0);
      owned_ = std::move(o.owned_);
    }
    return *this;
  }
  ~MappedFile() { release(); }

  static MappedFile open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    MIL_CHECK(fd >= 0, "cannot open '", path, "': ", std::strerror(errno),
              ": check the path and its permissions");
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      MIL_FAIL("cannot read '", path, "': not a regular file");
    }
    MappedFile f;
    f.size_ = size_t(st.st_size);
    if (f.size_ > 0) {  // mmap of 0 bytes fails; an empty file is simply no bytes
      void* p = ::mmap(nullptr, f.size_, PROT_READ, MAP_PRIVATE, fd, 0);
      int err = errno;
      ::close(fd);
      MIL_CHECK(p != MAP_FAILED, "cannot map '", path, "' (", f.size_,
                " bytes): ", std::strerror(err));
      f.map_ = p;
    } else {
      ::close(fd);
    }
    return f;
  }

  static MappedFile copy_of(std::span<const uint8_t> bytes) {
    MappedFile f;
    f.owned_.assign(bytes.begin(), bytes.end());
    f.size_ = f.owned_.size();
    return f;
  }

  std::span<const uint8_t> bytes() const {
    if (map_) return {static_cast<const uint8_t*>(map_), size_};
    return {owned_.data(), owned_.size()};
  }
  size_t size() const { return size_; }

 private:
  void release() noexcept {
    if (map_) ::munmap(map_, size_);
    map_ = nullptr;
    size_ = 0;
  }
  void* map_ = nullptr;
  size_t size_ = 0;
  std::vector<uint8_t> owned_;
};

}  // namespace mil::io
