// tde's bridge into RocksDB's C++ Env: an EncryptionProvider whose cipher streams call
// back into Rust, a FileSystem wrapper that routes the info LOG through the encrypted
// file system, and an EventListener that tells Rust which column family a new SST file
// belongs to.
//
// Invariant: no C++ exception crosses into Rust and no Rust panic crosses into C++ (the
// Rust callbacks catch panics and return an error code). Every function here is called
// from `src/ffi/rocksdb.rs` only.
//
// Layout note: `rocksdb_env_t` and `rocksdb_options_t` are private to RocksDB's c.cc;
// they are re-declared below for the exact RocksDB release the crate pins, and
// `tde_shim_layout_check` verifies them at start-up.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <memory>
#include <mutex>
#include <string>
#include <vector>
#ifdef TDE_TESTING
#include <filesystem>
#endif

#include "env/composite_env_wrapper.h"
#include "rocksdb/env.h"
#include "rocksdb/env_encryption.h"
#include "rocksdb/file_system.h"
#include "rocksdb/listener.h"
#include "rocksdb/options.h"

using ROCKSDB_NAMESPACE::BlockAccessCipherStream;
using ROCKSDB_NAMESPACE::CompositeEnvWrapper;
using ROCKSDB_NAMESPACE::EncryptionProvider;
using ROCKSDB_NAMESPACE::Env;
using ROCKSDB_NAMESPACE::EnvOptions;
using ROCKSDB_NAMESPACE::EventListener;
using ROCKSDB_NAMESPACE::FileSystem;
using ROCKSDB_NAMESPACE::FileAttributes;
using ROCKSDB_NAMESPACE::FileOptions;
using ROCKSDB_NAMESPACE::FileSystemWrapper;
using ROCKSDB_NAMESPACE::FSRandomAccessFile;
using ROCKSDB_NAMESPACE::FSRandomRWFile;
using ROCKSDB_NAMESPACE::FSSequentialFile;
using ROCKSDB_NAMESPACE::FSWritableFile;
using ROCKSDB_NAMESPACE::IODebugContext;
using ROCKSDB_NAMESPACE::IOOptions;
using ROCKSDB_NAMESPACE::IOStatus;
using ROCKSDB_NAMESPACE::Logger;
using ROCKSDB_NAMESPACE::Options;
using ROCKSDB_NAMESPACE::Slice;
using ROCKSDB_NAMESPACE::Status;
using ROCKSDB_NAMESPACE::TableFileCreationBriefInfo;

// Private to RocksDB's c.cc (see the layout note above).
struct rocksdb_env_t {
  Env* rep;
  bool is_default;
};
struct rocksdb_options_t {
  Options rep;
};

extern "C" {
// Implemented in Rust (src/ffi/rocksdb.rs). Return 0 on success; otherwise a status
// code (1 = corruption, 2 = not supported, 3 = I/O error) with a message in `err`.
int32_t tde_rs_open_stream(void* ctx, const char* fname, size_t fname_len,
                           const char* prefix, size_t prefix_len,
                           void** stream, char* err, size_t err_cap);
int32_t tde_rs_new_prefix(void* ctx, const char* fname, size_t fname_len,
                          char* prefix, size_t prefix_len, char* err,
                          size_t err_cap);
int32_t tde_rs_stream_apply(void* stream, uint64_t offset, char* data,
                            size_t len);
void tde_rs_stream_free(void* stream);
void tde_rs_table_file_started(void* ctx, const char* cf, size_t cf_len,
                               const char* path, size_t path_len);
void tde_rs_context_release(void* ctx);
int32_t tde_rs_open_chunked(void* ctx, const char* fname, size_t fname_len,
                            const char* header, size_t header_len, void** file,
                            char* err, size_t err_cap);
int32_t tde_rs_chunk_apply(void* file, int32_t seal, uint64_t index, char* data,
                           size_t len, char* trailer);
void tde_rs_chunked_free(void* file);
void tde_rs_torn_tail(void* ctx, const char* fname, size_t fname_len, uint64_t bytes);
}

namespace {

constexpr size_t kErrCap = 512;
constexpr size_t kPrefixLength = 4096;

Status to_status(int32_t code, const char* err) {
  switch (code) {
    case 0:
      return Status::OK();
    case 1:
      return Status::Corruption("tde", err);
    case 2:
      return Status::NotSupported("tde", err);
    default:
      return Status::IOError("tde", err);
  }
}

// Holds one reference to the Rust context; released when the last owner goes.
struct Context {
  void* ctx;
  explicit Context(void* c) : ctx(c) {}
  ~Context() { tde_rs_context_release(ctx); }
};

class TdeStream : public BlockAccessCipherStream {
 public:
  explicit TdeStream(void* stream) : stream_(stream) {}
  ~TdeStream() override { tde_rs_stream_free(stream_); }

  size_t BlockSize() override { return 16; }

  Status Encrypt(uint64_t offset, char* data, size_t size) override {
    return Apply(offset, data, size);
  }
  Status Decrypt(uint64_t offset, char* data, size_t size) override {
    return Apply(offset, data, size);
  }

 protected:
  void AllocateScratch(std::string&) override {}
  Status EncryptBlock(uint64_t index, char* data, char*) override {
    return Apply(index * 16, data, 16);
  }
  Status DecryptBlock(uint64_t index, char* data, char*) override {
    return Apply(index * 16, data, 16);
  }

 private:
  Status Apply(uint64_t offset, char* data, size_t size) {
    if (tde_rs_stream_apply(stream_, offset, data, size) != 0) {
      return Status::IOError("tde", "cipher stream failed");
    }
    return Status::OK();
  }
  void* stream_;
};

class TdeProvider : public EncryptionProvider {
 public:
  explicit TdeProvider(std::shared_ptr<Context> ctx) : ctx_(std::move(ctx)) {}

  const char* Name() const override { return "TdeEncryptionProvider"; }
  size_t GetPrefixLength() const override { return kPrefixLength; }

  Status CreateNewPrefix(const std::string& fname, char* prefix,
                         size_t prefix_length) const override {
    try {
      char err[kErrCap] = {0};
      int32_t rc = tde_rs_new_prefix(ctx_->ctx, fname.data(), fname.size(),
                                     prefix, prefix_length, err, kErrCap);
      return to_status(rc, err);
    } catch (...) {
      return Status::IOError("tde", "exception while creating a file prefix");
    }
  }

  Status AddCipher(const std::string&, const char*, size_t, bool) override {
    return Status::NotSupported("tde", "ciphers are managed by tde's keyring");
  }

  Status CreateCipherStream(
      const std::string& fname, const EnvOptions&, Slice& prefix,
      std::unique_ptr<BlockAccessCipherStream>* result) override {
    try {
      char err[kErrCap] = {0};
      void* stream = nullptr;
      int32_t rc =
          tde_rs_open_stream(ctx_->ctx, fname.data(), fname.size(),
                             prefix.data(), prefix.size(), &stream, err, kErrCap);
      if (rc != 0) {
        return to_status(rc, err);
      }
      result->reset(new TdeStream(stream));
      return Status::OK();
    } catch (...) {
      return Status::IOError("tde", "exception while opening a cipher stream");
    }
  }

 private:
  std::shared_ptr<Context> ctx_;
};

// Routes the info LOG through the encrypted file system (the stock encrypted file
// system leaves NewLogger to the base file system, which writes plaintext).
class TdeFileSystem : public FileSystemWrapper {
 public:
  explicit TdeFileSystem(const std::shared_ptr<FileSystem>& target)
      : FileSystemWrapper(target) {}
  const char* Name() const override { return "TdeFileSystem"; }

  IOStatus NewLogger(const std::string& fname, const IOOptions&,
                     std::shared_ptr<Logger>* result,
                     IODebugContext*) override {
    if (env_ == nullptr) {
      return IOStatus::IOError("tde", "logger requested before the env exists");
    }
    Status s = ROCKSDB_NAMESPACE::NewEnvLogger(fname, env_, result);
    return s.ok() ? IOStatus::OK() : IOStatus::IOError(s.ToString());
  }

  Env* env_ = nullptr;
};


// ---- Format 2: every byte authenticated -------------------------------------------------
//
// Every file starts with tde's 4096-byte header (written and checked by Rust). What
// follows depends on the kind of file the header records:
//
// - table files (SST, blob: written once, read at random): chunks of kChunk bytes, each
//   sealed in place and followed by its trailer; chunk i is at kHeader + i * kSlot, the
//   last one may be shorter. Logical offsets map to physical ones by arithmetic.
// - logs (WAL, MANIFEST, OPTIONS, CURRENT, the info LOG, ...: appended, read in order):
//   frames, each a trailer followed by bytes appended, sealed: a flush writes what was
//   appended since the previous one as one frame, or as several of at most kMaxFrame
//   bytes, all but the last marked "more". A frame is written once and never rewritten,
//   so a torn append can only cut the flush being written; a reader cuts a torn tail (a
//   last frame cut short or not authenticating, and the frames of an unfinished flush
//   before it), and fails on any other damage.
//
// Trailer (kTrailer bytes): word (u32 LE: length, bit 31 "more") | nonce (32) | tag (16).
// The AEAD (the table's suite, under a key of the file's own) binds store, table, key
// version, file IV, kind, the chunk index or the frame's logical offset, and the word.
constexpr uint64_t kHeader = 4096;
constexpr uint64_t kChunk = 4096;
constexpr uint64_t kTrailer = 52;
constexpr uint64_t kSlot = kChunk + kTrailer;
constexpr uint64_t kMaxFrame = 64 << 10;
constexpr uint32_t kMore = 1u << 31;
constexpr int kKindTable = 1;
constexpr int kKindAt = 11;
constexpr const char* kAuthMarker = "tde authentication";

uint32_t le32(const char* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

// One file's sealing, held by Rust.
struct Sealer {
  void* file = nullptr;
  ~Sealer() { tde_rs_chunked_free(file); }
  // `more`: a frame that another of the same flush follows.
  bool Seal(uint64_t index, char* data, size_t len, char* trailer, bool more = false) const {
    return tde_rs_chunk_apply(file, more ? 2 : 1, index, data, len, trailer) == 0;
  }
  bool Open(uint64_t index, char* data, size_t len, char* trailer) const {
    return tde_rs_chunk_apply(file, 0, index, data, len, trailer) == 0;
  }
};

// A file's bytes that fail authentication (tampered, truncated, forged). The marker
// lets Rust report it as an authentication error naming the file.
IOStatus corrupt(const std::string& fname, const std::string& why) {
  return IOStatus::Corruption(kAuthMarker, fname + ": " + why);
}

// Reads `n` bytes at `offset` of `file` into `buf` (fewer at the end of the file).
IOStatus pread(FSRandomAccessFile* file, uint64_t offset, size_t n, std::string* buf) {
  buf->resize(n);
  Slice got;
  IOStatus s = file->Read(offset, n, IOOptions(), &got, &(*buf)[0], nullptr);
  if (!s.ok()) return s;
  if (got.data() != buf->data()) memmove(&(*buf)[0], got.data(), got.size());
  buf->resize(got.size());
  return IOStatus::OK();
}

// What a reader needs: the base file, its sealing, its kind and logical size, and for
// logs the frames (logical offset, physical offset of the trailer, length).
struct Opened {
  std::unique_ptr<FSRandomAccessFile> file;
  std::shared_ptr<Sealer> sealer;
  std::string name;
  bool table = false;
  uint64_t size = 0;
  struct Frame { uint64_t logical; uint64_t physical; uint32_t len; bool more; };
  std::vector<Frame> frames;
  bool torn = false;
  // A format-1 file (AES-CTR after the header, written before format 2): read, never
  // written; its bytes are not authenticated. Rust's cipher stream, freed here.
  void* legacy = nullptr;
  ~Opened() { tde_rs_stream_free(legacy); }
  // Logs: the frame last read, opened (readers ask for a few KiB at a time; a frame
  // holds up to kMaxFrame bytes and is authenticated whole).
  mutable std::mutex mu;
  mutable size_t cached_frame = SIZE_MAX;
  mutable std::string cached;
};

// Reads frame `k` of a log, authenticated, into `out`.
IOStatus ReadFrame(const Opened& f, size_t k, std::string* out) {
  const Opened::Frame& fr = f.frames[k];
  IOStatus s = pread(f.file.get(), fr.physical, kTrailer + fr.len, out);
  if (!s.ok()) return s;
  if (out->size() != kTrailer + fr.len) return corrupt(f.name, "a frame is truncated");
  std::string trailer = out->substr(0, kTrailer);
  out->erase(0, kTrailer);
  if (!f.sealer->Open(fr.logical, &(*out)[0], fr.len, &trailer[0])) {
    return corrupt(f.name, "the frame at offset " + std::to_string(fr.logical) + " does not authenticate");
  }
  return IOStatus::OK();
}

// Whether the bytes of a log from `at` (after its last complete frame) to `end` are what a
// crash leaves: less than a trailer, one frame cut short, or zeros.
IOStatus IsTornTail(FSRandomAccessFile* file, uint64_t at, uint64_t end, bool* torn) {
  std::string buf;
  *torn = true;
  if (end - at < kTrailer) return IOStatus::OK();
  IOStatus s = pread(file, at, kTrailer, &buf);
  if (!s.ok()) return s;
  uint32_t len = le32(buf.data()) & ~kMore;
  if (len > 0 && len <= kMaxFrame && at + kTrailer + len > end) return IOStatus::OK();
  for (uint64_t off = at; off < end; off += kMaxFrame) {
    s = pread(file, off, static_cast<size_t>(std::min<uint64_t>(kMaxFrame, end - off)), &buf);
    if (!s.ok()) return s;
    if (buf.empty()) break;
    if (std::any_of(buf.begin(), buf.end(), [](char c) { return c != 0; })) {
      *torn = false;
      return IOStatus::OK();
    }
  }
  return IOStatus::OK();
}

// Reads `n` bytes at logical `offset` into `scratch`. A table file's chunks are read with
// one read of the base file and opened in place.
IOStatus ReadAt(const Opened& f, uint64_t offset, size_t n, Slice* result, char* scratch) {
  size_t done = 0;
  n = offset < f.size ? static_cast<size_t>(std::min<uint64_t>(n, f.size - offset)) : 0;
  if (n == 0) {
    *result = Slice(scratch, 0);
    return IOStatus::OK();
  }
  if (f.legacy != nullptr) {
    Slice got;
    IOStatus s = f.file->Read(kHeader + offset, n, IOOptions(), &got, scratch, nullptr);
    if (!s.ok()) return s;
    if (got.data() != scratch) memmove(scratch, got.data(), got.size());
    if (got.size() > 0 &&
        tde_rs_stream_apply(f.legacy, kHeader + offset, scratch, got.size()) != 0) {
      return IOStatus::IOError("tde", f.name + ": decrypting failed");
    }
    *result = Slice(scratch, got.size());
    return IOStatus::OK();
  }
  if (f.table) {
    uint64_t first = offset / kChunk, last = (offset + n - 1) / kChunk;
    // One buffer per thread, grown as needed and never zero-filled: reads are the hot path.
    thread_local std::unique_ptr<char[]> tl;
    thread_local size_t tl_cap = 0;
    size_t want = static_cast<size_t>((last - first + 1) * kSlot);
    if (tl_cap < want) {
      tl.reset(new char[want]);
      tl_cap = want;
    }
    Slice got;
    IOStatus s = f.file->Read(kHeader + first * kSlot, want, IOOptions(), &got, tl.get(), nullptr);
    if (!s.ok()) return s;
    if (got.data() != tl.get()) memmove(tl.get(), got.data(), got.size());
    char* buf = tl.get();
    size_t got_len = got.size();
    for (uint64_t i = first; i <= last; i++) {
      size_t at = static_cast<size_t>((i - first) * kSlot);
      if (got_len <= at + kTrailer) {
        return corrupt(f.name, "chunk " + std::to_string(i) + " is truncated");
      }
      size_t len = static_cast<size_t>(std::min<uint64_t>(kSlot, got_len - at) - kTrailer);
      if (len < kChunk && i != last) {
        return corrupt(f.name, "chunk " + std::to_string(i) + " is truncated");
      }
      char* data = &buf[at];
      if (!f.sealer->Open(i, data, len, data + len)) {
        return corrupt(f.name, "chunk " + std::to_string(i) + " does not authenticate");
      }
      uint64_t start = i * kChunk;
      uint64_t from = std::max<uint64_t>(offset, start);
      uint64_t to = std::min<uint64_t>(offset + n, start + len);
      if (to > from) {
        memcpy(scratch + (from - offset), data + (from - start), static_cast<size_t>(to - from));
        done = static_cast<size_t>(to - offset);
      }
    }
    *result = Slice(scratch, done);
    return IOStatus::OK();
  }
  std::lock_guard<std::mutex> lock(f.mu);
  std::string& buf = f.cached;
  while (done < n) {
    uint64_t at = offset + done;
    auto it = std::upper_bound(f.frames.begin(), f.frames.end(), at,
                               [](uint64_t v, const Opened::Frame& fr) { return v < fr.logical; });
    if (it == f.frames.begin()) break;
    --it;
    size_t k = static_cast<size_t>(it - f.frames.begin());
    if (f.cached_frame != k) {
      f.cached_frame = SIZE_MAX;
      IOStatus s = ReadFrame(f, k, &buf);
      if (!s.ok()) return s;
      f.cached_frame = k;
    }
    uint64_t within = at - it->logical;
    if (within >= buf.size()) break;
    size_t take = static_cast<size_t>(std::min<uint64_t>(n - done, buf.size() - within));
    memcpy(scratch + done, buf.data() + within, take);
    done += take;
  }
  *result = Slice(scratch, done);
  return IOStatus::OK();
}

class ChunkedRandomAccessFile : public FSRandomAccessFile {
 public:
  explicit ChunkedRandomAccessFile(std::unique_ptr<Opened> f) : f_(std::move(f)) {}
  IOStatus Read(uint64_t offset, size_t n, const IOOptions&, Slice* result, char* scratch,
                IODebugContext*) const override {
    return ReadAt(*f_, offset, n, result, scratch);
  }
  IOStatus GetFileSize(uint64_t* result) override {
    *result = f_->size;
    return IOStatus::OK();
  }
 private:
  std::unique_ptr<Opened> f_;
};

class ChunkedSequentialFile : public FSSequentialFile {
 public:
  explicit ChunkedSequentialFile(std::unique_ptr<Opened> f) : f_(std::move(f)) {}
  IOStatus Read(size_t n, const IOOptions&, Slice* result, char* scratch, IODebugContext*) override {
    IOStatus s = ReadAt(*f_, pos_, n, result, scratch);
    if (s.ok()) pos_ += result->size();
    return s;
  }
  IOStatus PositionedRead(uint64_t offset, size_t n, const IOOptions&, Slice* result,
                          char* scratch, IODebugContext*) override {
    return ReadAt(*f_, offset, n, result, scratch);
  }
  IOStatus Skip(uint64_t n) override {
    pos_ = std::min(pos_ + n, f_->size);
    return IOStatus::OK();
  }
 private:
  std::unique_ptr<Opened> f_;
  uint64_t pos_ = 0;
};

// The files this file system has open for writing: a reader of one (RocksDB asks a live
// WAL's size for a checkpoint) can see a frame half written, which is no torn tail.
class Writing {
 public:
  void Add(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    names_.insert(name);
  }
  void Remove(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = names_.find(name);
    if (it != names_.end()) names_.erase(it);
  }
  bool Contains(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    return names_.count(name) != 0;
  }

 private:
  std::mutex mu_;
  std::multiset<std::string> names_;
};

class ChunkedWritableFile : public FSWritableFile {
 public:
  ChunkedWritableFile(std::unique_ptr<FSRandomRWFile> file, std::shared_ptr<Sealer> sealer,
                      bool table, std::string name, std::shared_ptr<Writing> writing)
      : file_(std::move(file)), sealer_(std::move(sealer)), table_(table), name_(std::move(name)),
        writing_(std::move(writing)) {
    writing_->Add(name_);
  }
  ~ChunkedWritableFile() override {
    if (!closed_) Close(IOOptions(), nullptr).PermitUncheckedError();
    writing_->Remove(name_);
  }

  IOStatus Append(const Slice& data, const IOOptions& o, IODebugContext* dbg) override {
    std::lock_guard<std::mutex> lock(mu_);
    const char* p = data.data();
    size_t left = data.size();
    size_t limit = table_ ? kChunk : kMaxFrame;
    while (left > 0) {
      // A full chunk or frame goes out once more bytes follow it (a log's last frame of a
      // flush waits for the flush, so that it is the one not marked "more").
      if (pending_.size() == limit) {
        IOStatus s = Emit(o, dbg, true);
        if (!s.ok()) return s;
      }
      size_t n = std::min(limit - pending_.size(), left);
      pending_.append(p, n);
      p += n;
      left -= n;
      size_ += n;
    }
    return IOStatus::OK();
  }
  IOStatus Append(const Slice& data, const IOOptions& o,
                  const ROCKSDB_NAMESPACE::DataVerificationInfo&, IODebugContext* dbg) override {
    return Append(data, o, dbg);
  }
  // A log's appended bytes reach the operating system at every flush (as a frame); a
  // table file's partial last chunk waits for sync or close.
  IOStatus Flush(const IOOptions& o, IODebugContext* dbg) override {
    std::lock_guard<std::mutex> lock(mu_);
    return table_ ? IOStatus::OK() : Emit(o, dbg);
  }
  IOStatus Sync(const IOOptions& o, IODebugContext* dbg) override {
    std::lock_guard<std::mutex> lock(mu_);
    IOStatus s = Emit(o, dbg);
    return s.ok() ? file_->Sync(o, dbg) : s;
  }
  IOStatus Fsync(const IOOptions& o, IODebugContext* dbg) override {
    std::lock_guard<std::mutex> lock(mu_);
    IOStatus s = Emit(o, dbg);
    return s.ok() ? file_->Fsync(o, dbg) : s;
  }
  IOStatus Close(const IOOptions& o, IODebugContext* dbg) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return IOStatus::OK();
    closed_ = true;
    IOStatus s = Emit(o, dbg);
    IOStatus c = file_->Close(o, dbg);
    return s.ok() ? c : s;
  }
  uint64_t GetFileSize(const IOOptions&, IODebugContext*) override {
    std::lock_guard<std::mutex> lock(mu_);
    return size_;
  }
  IOStatus Truncate(uint64_t size, const IOOptions&, IODebugContext*) override {
    std::lock_guard<std::mutex> lock(mu_);
    return size == size_ ? IOStatus::OK() : IOStatus::NotSupported("tde", name_ + ": truncating");
  }
  bool IsSyncThreadSafe() const override { return true; }

 private:
  // Writes what is pending: for a table file the current chunk (sealed afresh, in place,
  // each time it grows; the chunk moves on once full), for a log one new frame.
  IOStatus Emit(const IOOptions& o, IODebugContext* dbg, bool more = false) {
    if (pending_.empty() || (table_ && written_ == pending_.size())) return WriteBatch(o, dbg);
    std::string out;
    char trailer[kTrailer];
    if (table_) {
      uint64_t chunk = (size_ - pending_.size()) / kChunk;
      if (batch_.empty()) batch_at_ = kHeader + chunk * kSlot;
      size_t at = batch_.size();
      batch_.append(pending_);
      if (!sealer_->Seal(chunk, &batch_[at], pending_.size(), trailer)) {
        batch_.resize(at);
        return IOStatus::IOError("tde", name_ + ": sealing a chunk failed");
      }
      batch_.append(trailer, kTrailer);
      bool full = pending_.size() == kChunk;
      if (full) {
        pending_.clear();
        written_ = 0;
      } else {
        written_ = pending_.size();
      }
      // Full chunks go to the file a batch at a time; a partial one (sync, close) at once.
      if (!full || batch_.size() >= kBatch) return WriteBatch(o, dbg);
      return IOStatus::OK();
    }
    uint64_t logical = size_ - pending_.size();
    out.assign(kTrailer, '\0');
    out.append(pending_);
    if (!sealer_->Seal(logical, &out[kTrailer], pending_.size(), trailer, more)) {
      return IOStatus::IOError("tde", name_ + ": sealing a frame failed");
    }
    memcpy(&out[0], trailer, kTrailer);
    IOStatus s = file_->Write(physical_, Slice(out), o, dbg);
    if (!s.ok()) return s;
    physical_ += out.size();
    pending_.clear();
    return IOStatus::OK();
  }

  IOStatus WriteBatch(const IOOptions& o, IODebugContext* dbg) {
    if (batch_.empty()) return IOStatus::OK();
    IOStatus s = file_->Write(batch_at_, Slice(batch_), o, dbg);
    batch_.clear();
    return s;
  }

  static constexpr size_t kBatch = 64 * kSlot;
  std::string batch_;      // sealed chunks not yet written, from batch_at_
  uint64_t batch_at_ = 0;
  std::unique_ptr<FSRandomRWFile> file_;
  std::shared_ptr<Sealer> sealer_;
  bool table_;
  std::string name_;
  std::shared_ptr<Writing> writing_;
  std::string pending_;   // bytes not yet in a frame, or the current chunk
  size_t written_ = 0;    // table files: bytes of the current chunk already on disk
  uint64_t size_ = 0;     // logical bytes appended
  uint64_t physical_ = kHeader;  // logs: where the next frame goes
  bool closed_ = false;
  std::mutex mu_;
};

class TdeChunkedFileSystem : public FileSystemWrapper {
 public:
  TdeChunkedFileSystem(const std::shared_ptr<FileSystem>& target, std::shared_ptr<Context> ctx)
      : FileSystemWrapper(target), ctx_(std::move(ctx)) {}
  const char* Name() const override { return "TdeChunkedFileSystem"; }

  IOStatus NewSequentialFile(const std::string& fname, const FileOptions& options,
                             std::unique_ptr<FSSequentialFile>* result,
                             IODebugContext* dbg) override {
    if (options.use_mmap_reads) return IOStatus::InvalidArgument("tde: mmap reads");
    std::unique_ptr<Opened> f;
    IOStatus s = Open(fname, options, &f, dbg);
    if (s.ok()) result->reset(new ChunkedSequentialFile(std::move(f)));
    return s;
  }
  IOStatus NewRandomAccessFile(const std::string& fname, const FileOptions& options,
                               std::unique_ptr<FSRandomAccessFile>* result,
                               IODebugContext* dbg) override {
    if (options.use_mmap_reads) return IOStatus::InvalidArgument("tde: mmap reads");
    std::unique_ptr<Opened> f;
    IOStatus s = Open(fname, options, &f, dbg);
    if (s.ok()) result->reset(new ChunkedRandomAccessFile(std::move(f)));
    return s;
  }
  IOStatus NewWritableFile(const std::string& fname, const FileOptions& options,
                           std::unique_ptr<FSWritableFile>* result,
                           IODebugContext* dbg) override {
    if (options.use_mmap_writes) return IOStatus::InvalidArgument("tde: mmap writes");
    FileOptions plain(options);
    plain.use_direct_writes = false;
    {
      std::unique_ptr<FSWritableFile> empty;
      IOStatus s = target()->NewWritableFile(fname, plain, &empty, dbg);
      if (!s.ok()) return s;
      s = empty->Close(options.io_options, dbg);
      if (!s.ok()) return s;
    }
    std::string header(kHeader, '\0');
    char err[kErrCap] = {0};
    int32_t rc = tde_rs_new_prefix(ctx_->ctx, fname.data(), fname.size(), &header[0],
                                   header.size(), err, kErrCap);
    if (rc != 0) return status_of(rc, err);
    auto sealer = std::make_shared<Sealer>();
    rc = tde_rs_open_chunked(ctx_->ctx, fname.data(), fname.size(), header.data(), header.size(),
                             &sealer->file, err, kErrCap);
    if (rc != 0) return status_of(rc, err);
    std::unique_ptr<FSRandomRWFile> rw;
    IOStatus s = target()->NewRandomRWFile(fname, plain, &rw, dbg);
    if (!s.ok()) return s;
    s = rw->Write(0, Slice(header), options.io_options, dbg);
    if (!s.ok()) return s;
    bool table = header[kKindAt] == kKindTable;
    result->reset(new ChunkedWritableFile(std::move(rw), sealer, table, fname, writing_));
    return IOStatus::OK();
  }
  IOStatus ReopenWritableFile(const std::string& fname, const FileOptions&,
                              std::unique_ptr<FSWritableFile>*, IODebugContext*) override {
    return IOStatus::NotSupported("tde", fname + ": reopening a file for append");
  }
  IOStatus ReuseWritableFile(const std::string& fname, const std::string&, const FileOptions&,
                             std::unique_ptr<FSWritableFile>*, IODebugContext*) override {
    return IOStatus::NotSupported("tde", fname + ": recycling a file");
  }
  IOStatus NewRandomRWFile(const std::string& fname, const FileOptions&,
                           std::unique_ptr<FSRandomRWFile>*, IODebugContext*) override {
    return IOStatus::NotSupported("tde", fname + ": random writes");
  }
  IOStatus GetFileSize(const std::string& fname, const IOOptions& options, uint64_t* size,
                       IODebugContext* dbg) override {
    FileOptions fo;
    fo.io_options = options;
    std::unique_ptr<Opened> f;
    IOStatus s = Open(fname, fo, &f, dbg);
    if (s.ok()) *size = f->size;
    return s;
  }
  IOStatus GetChildrenFileAttributes(const std::string& dir, const IOOptions& options,
                                     std::vector<FileAttributes>* result,
                                     IODebugContext* dbg) override {
    IOStatus s = target()->GetChildrenFileAttributes(dir, options, result, dbg);
    if (!s.ok()) return s;
    for (auto& a : *result) {
      uint64_t size = 0;
      if (a.size_bytes >= kHeader && GetFileSize(dir + "/" + a.name, options, &size, dbg).ok()) {
        a.size_bytes = size;
      }
    }
    return IOStatus::OK();
  }
  IOStatus NewLogger(const std::string& fname, const IOOptions&, std::shared_ptr<Logger>* result,
                     IODebugContext*) override {
    if (env_ == nullptr) return IOStatus::IOError("tde", "logger requested before the env exists");
    Status s = ROCKSDB_NAMESPACE::NewEnvLogger(fname, env_, result);
    return s.ok() ? IOStatus::OK() : IOStatus::IOError(s.ToString());
  }

  Env* env_ = nullptr;

 private:
  // A header that fails its checks (Rust's code 1, its message naming the file) is a
  // failed authentication like any other damaged byte.
  static IOStatus status_of(int32_t rc, const char* err) {
    if (rc == 1) return IOStatus::Corruption(kAuthMarker, err);
    Status s = to_status(rc, err);
    return IOStatus::IOError(s.ToString());
  }

  IOStatus Open(const std::string& fname, const FileOptions& options, std::unique_ptr<Opened>* out,
                IODebugContext* dbg) {
    FileOptions plain(options);
    plain.use_direct_reads = false;
    uint64_t physical = 0;
    IOStatus s = target()->GetFileSize(fname, options.io_options, &physical, dbg);
    if (!s.ok()) return s;
    std::unique_ptr<Opened> f(new Opened());
    f->name = fname;
    s = target()->NewRandomAccessFile(fname, plain, &f->file, dbg);
    if (!s.ok()) return s;
    // CURRENT, IDENTITY and OPTIONS files are synced before RocksDB renames them into
    // place: they cannot have a torn tail.
    std::string base = fname.substr(fname.find_last_of('/') + 1);
    bool whole = base == "CURRENT" || base == "IDENTITY" || base.rfind("OPTIONS-", 0) == 0;
    if (physical < kHeader) {
      // Created, then cut before its header was whole (a crash right after creation): no
      // byte of it can be authenticated, so it holds none. Reported when not empty; a
      // table file the MANIFEST lists with a size fails RocksDB's own size check.
      if (whole) return corrupt(fname, "shorter than its header");
      if (physical > 0) TornTail(fname, physical);
      *out = std::move(f);
      return IOStatus::OK();
    }
    std::string header;
    s = pread(f->file.get(), 0, kHeader, &header);
    if (!s.ok()) return s;
    if (header.size() < kHeader) return corrupt(fname, "shorter than its header");
    char err[kErrCap] = {0};
    if (header[8] == 1 && header[9] == 0) {
      // Format 1: readable until rewritten (compaction, `tde upgrade`).
      int32_t rc = tde_rs_open_stream(ctx_->ctx, fname.data(), fname.size(), header.data(),
                                      header.size(), &f->legacy, err, kErrCap);
      if (rc != 0) return status_of(rc, err);
      f->size = physical - kHeader;
      *out = std::move(f);
      return IOStatus::OK();
    }
    f->sealer = std::make_shared<Sealer>();
    int32_t rc = tde_rs_open_chunked(ctx_->ctx, fname.data(), fname.size(), header.data(),
                                     header.size(), &f->sealer->file, err, kErrCap);
    if (rc != 0) return status_of(rc, err);
    f->table = header[kKindAt] == kKindTable;
    if (f->table) {
      uint64_t body = physical - kHeader;
      uint64_t full = body / kSlot, rest = body % kSlot;
      if (rest != 0 && rest <= kTrailer) return corrupt(fname, "its last chunk is truncated");
      f->size = full * kChunk + (rest == 0 ? 0 : rest - kTrailer);
    } else {
      // Walk the complete frames. A crash can leave a torn tail after them: one frame cut
      // short, a last frame that does not authenticate, or zeros. Anything else is damage.
      uint64_t at = kHeader, logical = 0;
      std::string t;
      while (physical - at >= kTrailer) {
        s = pread(f->file.get(), at, kTrailer, &t);
        if (!s.ok()) return s;
        uint32_t word = le32(t.data());
        uint32_t len = word & ~kMore;
        if (len == 0 || len > kMaxFrame || at + kTrailer + len > physical) break;
        f->frames.push_back({logical, at, len, (word & kMore) != 0});
        at += kTrailer + len;
        logical += len;
      }
      std::string last;
      if (at < physical) {
        bool tail = false;
        s = IsTornTail(f->file.get(), at, physical, &tail);
        if (!s.ok()) return s;
        if (!tail) {
          return corrupt(fname, "the bytes at offset " + std::to_string(at) +
                                    " are neither a frame nor a torn tail");
        }
        f->torn = true;
      } else if (!f->frames.empty() && !ReadFrame(*f, f->frames.size() - 1, &last).ok()) {
        logical -= f->frames.back().len;
        f->frames.pop_back();
        f->torn = true;
      }
      // The frames of a flush that did not finish (the last kept one is marked "more") go
      // too. Each is authenticated first, its mark included, and so is the frame that
      // then ends the file: a forged mark fails the open rather than moving the cut.
      bool cut_flush = !f->frames.empty() && f->frames.back().more;
      while (!f->frames.empty() && f->frames.back().more) {
        if (!ReadFrame(*f, f->frames.size() - 1, &last).ok()) {
          return corrupt(fname, "a frame does not authenticate");
        }
        logical -= f->frames.back().len;
        f->frames.pop_back();
        f->torn = true;
      }
      if (cut_flush && !f->frames.empty() && !ReadFrame(*f, f->frames.size() - 1, &last).ok()) {
        return corrupt(fname, "a frame does not authenticate");
      }
      f->size = logical;
      if (f->torn && whole) return corrupt(fname, "its last frame does not authenticate");
      if (f->torn) {
        uint64_t kept = f->frames.empty() ? kHeader
                                          : f->frames.back().physical + kTrailer + f->frames.back().len;
        TornTail(fname, physical - kept);
      }
    }
    *out = std::move(f);
    return IOStatus::OK();
  }

  // Reports a torn tail cut from `fname`, unless this file system is writing it now.
  void TornTail(const std::string& fname, uint64_t bytes) {
    if (!writing_->Contains(fname)) tde_rs_torn_tail(ctx_->ctx, fname.data(), fname.size(), bytes);
  }

  std::shared_ptr<Context> ctx_;
  std::shared_ptr<Writing> writing_ = std::make_shared<Writing>();
};

#ifdef TDE_TESTING
// ---- Crash simulation (built with the `testing` feature only) ---------------------------
//
// Sits under tde's file system and counts the calls that change the disk: file creations,
// writes, syncs, renames and deletions. At the armed count the process "dies": a write
// there is torn (a seeded prefix of it reaches the disk), and that call and every later
// change fail. `tde_shim_crash_settle` then drops what a power cut may drop: each file
// keeps what was synced plus a seeded prefix of what was written after. (Directory
// entries are taken as durable at once; renames and deletions are not undone.)
struct CrashState {
  std::mutex mu;
  bool crashed = false;
  uint64_t ops = 0;
  uint64_t crash_at = UINT64_MAX;
  uint64_t rng = 1;
  struct Lengths { uint64_t synced = 0; uint64_t written = 0; };
  std::map<std::string, Lengths> files;

  uint64_t Next() {  // xorshift64*
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 2685821657736338717ULL;
  }
  // Counts one change; false if the process is dead (or dies at this change).
  bool Step() {
    if (crashed) return false;
    if (++ops == crash_at) crashed = true;
    return !crashed;
  }
};
CrashState& crash_state() {
  static CrashState* state = new CrashState();
  return *state;
}
IOStatus died() { return IOStatus::IOError("tde", "simulated crash"); }

class CrashRWFile : public ROCKSDB_NAMESPACE::FSRandomRWFileOwnerWrapper {
 public:
  CrashRWFile(std::unique_ptr<FSRandomRWFile> t, std::string name)
      : FSRandomRWFileOwnerWrapper(std::move(t)), name_(std::move(name)) {}
  IOStatus Write(uint64_t offset, const Slice& data, const IOOptions& o,
                 IODebugContext* dbg) override {
    CrashState& c = crash_state();
    std::lock_guard<std::mutex> lock(c.mu);
    if (c.crashed) return died();
    Slice part = data;
    bool dies = !c.Step();
    if (dies) part = Slice(data.data(), c.Next() % (data.size() + 1));
    IOStatus s = part.empty() ? IOStatus::OK() : target()->Write(offset, part, o, dbg);
    if (s.ok()) {
      auto& len = c.files[name_];
      len.written = std::max(len.written, offset + part.size());
    }
    return dies ? died() : s;
  }
  IOStatus Sync(const IOOptions& o, IODebugContext* dbg) override { return Durable(o, dbg); }
  IOStatus Fsync(const IOOptions& o, IODebugContext* dbg) override { return Durable(o, dbg); }

 private:
  IOStatus Durable(const IOOptions& o, IODebugContext* dbg) {
    CrashState& c = crash_state();
    std::lock_guard<std::mutex> lock(c.mu);
    if (!c.Step()) return died();
    IOStatus s = target()->Fsync(o, dbg);
    if (s.ok()) {
      auto& len = c.files[name_];
      len.synced = len.written;
    }
    return s;
  }
  std::string name_;
};

class CrashFileSystem : public FileSystemWrapper {
 public:
  explicit CrashFileSystem(const std::shared_ptr<FileSystem>& target) : FileSystemWrapper(target) {}
  const char* Name() const override { return "TdeCrashFileSystem"; }

  IOStatus NewWritableFile(const std::string& fname, const FileOptions& options,
                           std::unique_ptr<FSWritableFile>* result, IODebugContext* dbg) override {
    CrashState& c = crash_state();
    std::lock_guard<std::mutex> lock(c.mu);
    if (!c.Step()) return died();
    IOStatus s = target()->NewWritableFile(fname, options, result, dbg);
    if (s.ok()) c.files[fname] = CrashState::Lengths();
    return s;
  }
  IOStatus NewRandomRWFile(const std::string& fname, const FileOptions& options,
                           std::unique_ptr<FSRandomRWFile>* result, IODebugContext* dbg) override {
    std::unique_ptr<FSRandomRWFile> file;
    IOStatus s = target()->NewRandomRWFile(fname, options, &file, dbg);
    if (s.ok()) result->reset(new CrashRWFile(std::move(file), fname));
    return s;
  }
  IOStatus RenameFile(const std::string& src, const std::string& dst, const IOOptions& o,
                      IODebugContext* dbg) override {
    CrashState& c = crash_state();
    std::lock_guard<std::mutex> lock(c.mu);
    if (!c.Step()) return died();
    IOStatus s = target()->RenameFile(src, dst, o, dbg);
    if (s.ok()) {
      auto it = c.files.find(src);
      if (it != c.files.end()) {
        c.files[dst] = it->second;
        c.files.erase(src);
      } else {
        c.files.erase(dst);
      }
    }
    return s;
  }
  IOStatus DeleteFile(const std::string& fname, const IOOptions& o, IODebugContext* dbg) override {
    CrashState& c = crash_state();
    std::lock_guard<std::mutex> lock(c.mu);
    if (!c.Step()) return died();
    IOStatus s = target()->DeleteFile(fname, o, dbg);
    if (s.ok()) c.files.erase(fname);
    return s;
  }
  IOStatus LinkFile(const std::string& src, const std::string& dst, const IOOptions& o,
                    IODebugContext* dbg) override {
    CrashState& c = crash_state();
    std::lock_guard<std::mutex> lock(c.mu);
    if (!c.Step()) return died();
    return target()->LinkFile(src, dst, o, dbg);
  }
};
#endif  // TDE_TESTING

class TdeListener : public EventListener {
 public:
  explicit TdeListener(std::shared_ptr<Context> ctx) : ctx_(std::move(ctx)) {}
  const char* Name() const override { return "TdeListener"; }
  void OnTableFileCreationStarted(
      const TableFileCreationBriefInfo& info) override {
    try {
      tde_rs_table_file_started(ctx_->ctx, info.cf_name.data(),
                                info.cf_name.size(), info.file_path.data(),
                                info.file_path.size());
    } catch (...) {
    }
  }

 private:
  std::shared_ptr<Context> ctx_;
};

}  // namespace

extern "C" {

// Creates an Env whose files are all encrypted through the Rust context `ctx`. Takes one
// reference to `ctx` (released through tde_rs_context_release). Returns nullptr on
// failure.
// `format1`: files written as the previous release wrote them (RocksDB's encrypted file
// system, AES-CTR after tde's header); only tests of reading such stores ask for it.
// `crash`: the crash-simulating file system sits under tde's (tests only).
rocksdb_env_t* tde_shim_env_create(void* ctx, int32_t format1, int32_t crash) {
  // Ownership of `ctx` passes to the shim here, whatever happens: if the Context cannot
  // even be allocated, it is released at once; after that, by the Context's destructor.
  // The caller never frees it (no double free on an allocation failure half-way).
  std::shared_ptr<Context> context;
  try {
    context = std::make_shared<Context>(ctx);
  } catch (...) {
    tde_rs_context_release(ctx);
    return nullptr;
  }
  try {
    Env* base = Env::Default();
    if (base == nullptr) return nullptr;
    std::unique_ptr<Env> env;
    if (format1 != 0) {
      auto provider = std::make_shared<TdeProvider>(context);
      auto encrypted = ROCKSDB_NAMESPACE::NewEncryptedFS(base->GetFileSystem(), provider);
      if (!encrypted) return nullptr;
      auto fs = std::make_shared<TdeFileSystem>(encrypted);
      env.reset(new CompositeEnvWrapper(base, fs));
      fs->env_ = env.get();
    } else {
      std::shared_ptr<FileSystem> under = base->GetFileSystem();
#ifdef TDE_TESTING
      if (crash != 0) under = std::make_shared<CrashFileSystem>(under);
#else
      if (crash != 0) return nullptr;
#endif
      auto fs = std::make_shared<TdeChunkedFileSystem>(under, context);
      env.reset(new CompositeEnvWrapper(base, fs));
      fs->env_ = env.get();
    }
    auto* out = new rocksdb_env_t{env.get(), false};
    env.release();
    return out;
  } catch (...) {
    return nullptr;
  }
}

// Adds a listener that reports new SST files' column families to `ctx`. Takes ownership
// of one reference to `ctx` in every case (released on failure). Returns 0 on success.
int32_t tde_shim_options_add_listener(rocksdb_options_t* opts, void* ctx) {
  std::shared_ptr<Context> context;
  try {
    context = std::make_shared<Context>(ctx);
  } catch (...) {
    tde_rs_context_release(ctx);
    return -1;
  }
  if (opts == nullptr) return -1;
  try {
    opts->rep.listeners.push_back(std::make_shared<TdeListener>(context));
    return 0;
  } catch (...) {
    return -1;
  }
}

// Reads fields the C API sets, through the private layouts, so Rust can compare them
// with what it set: max_open_files, and whether `env` is the one installed.
int32_t tde_shim_options_max_open_files(const rocksdb_options_t* opts) {
  return opts->rep.max_open_files;
}
int32_t tde_shim_options_env_is(const rocksdb_options_t* opts,
                                const rocksdb_env_t* env) {
  return opts->rep.env == env->rep ? 1 : 0;
}
// The options that would defeat the encrypted file layer: recycled log files are
// rewritten in place under the keystream they were first written with, and mmap reads
// and writes bypass the file system wrapper.
void tde_shim_options_risky(const rocksdb_options_t* opts, uint64_t* recycle_log_file_num,
                            int32_t* allow_mmap_reads, int32_t* allow_mmap_writes) {
  *recycle_log_file_num = opts->rep.recycle_log_file_num;
  *allow_mmap_reads = opts->rep.allow_mmap_reads ? 1 : 0;
  *allow_mmap_writes = opts->rep.allow_mmap_writes ? 1 : 0;
}
int32_t tde_shim_env_is_default(const rocksdb_env_t* env) {
  return env->is_default ? 1 : 0;
}
size_t tde_shim_prefix_length() { return kPrefixLength; }

#ifdef TDE_TESTING
// The crash simulation's controls: arm (the change numbered `at`, counting from 1, is the
// one the process dies at; 0 never), read the count and whether it died, and settle the
// files after the "power cut". Returns from settle the number of files cut.
void tde_shim_crash_arm(uint64_t at, uint64_t seed) {
  CrashState& c = crash_state();
  std::lock_guard<std::mutex> lock(c.mu);
  c.crashed = false;
  c.ops = 0;
  c.crash_at = at == 0 ? UINT64_MAX : at;
  c.rng = seed | 1;
  c.files.clear();
}
uint64_t tde_shim_crash_ops() {
  CrashState& c = crash_state();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.ops;
}
int32_t tde_shim_crash_crashed() {
  CrashState& c = crash_state();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.crashed ? 1 : 0;
}
int64_t tde_shim_crash_settle() {
  CrashState& c = crash_state();
  std::lock_guard<std::mutex> lock(c.mu);
  int64_t cut = 0;
  for (const auto& [name, len] : c.files) {
    if (len.written <= len.synced) continue;
    uint64_t keep = len.synced + c.Next() % (len.written - len.synced + 1);
    std::error_code ec;
    if (!std::filesystem::exists(name, ec)) continue;
    std::filesystem::resize_file(name, keep, ec);
    if (ec) return -1;
    cut++;
  }
  c.files.clear();
  c.crash_at = UINT64_MAX;
  c.crashed = false;
  return cut;
}
#endif

}  // extern "C"
