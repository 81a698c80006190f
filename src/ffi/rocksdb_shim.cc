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
#include <memory>
#include <mutex>
#include <string>
#include <vector>

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
int32_t tde_rs_chunk_seal(void* ctx, const char* ident, size_t ident_len,
                          uint64_t index, const char* data, size_t len,
                          char* record);
int32_t tde_rs_chunk_verify(void* ctx, const char* ident, size_t ident_len,
                            uint64_t index, const char* data, size_t len,
                            const char* record);
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


// ---- Authenticated chunks ---------------------------------------------------------------
//
// The layer under RocksDB's encrypted file system: it sees each file as stored (tde's
// 4096-byte header, then AES-CTR ciphertext) and authenticates every byte of it, in
// chunks of kChunk bytes. Physical layout: chunk i occupies slot i, at i * kSlot:
//
//   kChunk bytes of data | record A (kRecord) | record B (kRecord)
//
// A record: length (u32 LE) | generation (u32 LE) | nonce (12) | tag (16) | zero (4); the
// tag is a GMAC (Rust: tde_rs_chunk_seal) over the store, the file's header fields (table,
// key version, IV), the chunk index, length, generation and the chunk's first `length`
// bytes. Data is only ever appended; a chunk's record is rewritten as the chunk grows,
// alternating between A and B so that the record covering the last synced length is
// never overwritten before a newer one is synced. A reader takes the valid record with the
// highest generation; every chunk but the last must be full.
constexpr uint64_t kChunk = 4096;
constexpr uint64_t kRecord = 40;
constexpr uint64_t kSlot = kChunk + 2 * kRecord;
// Bytes of tde's file header that identify a file (magic .. checksum).
constexpr size_t kIdent = 68;

uint32_t le32(const char* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

// The chunk index and offset of a logical position.
uint64_t slot_of(uint64_t chunk) { return chunk * kSlot; }

struct Chunk {
  std::string data;  // the authenticated bytes of the chunk
  bool valid = false;
};

// Reads and authenticates chunks of one file through a random-access file of the base
// file system.
class ChunkReader {
 public:
  ChunkReader(std::unique_ptr<FSRandomAccessFile> file, void* ctx, std::string name)
      : file_(std::move(file)), ctx_(ctx), name_(std::move(name)) {}

  // Reads the physical size and authenticates the first and last chunks; sets the
  // logical size.
  IOStatus Init(uint64_t physical) {
    physical_ = physical;
    if (physical == 0) {
      size_ = 0;
      return IOStatus::OK();
    }
    uint64_t slots = (physical + kSlot - 1) / kSlot;
    std::string first;
    IOStatus s = ReadSlot(0, &first);
    if (!s.ok()) return s;
    if (first.size() < kIdent) {
      return IOStatus::Corruption("tde", name_ + ": shorter than its header");
    }
    ident_.assign(first.data(), kIdent);
    Chunk c;
    s = Open(slots - 1, slots - 1 == 0 ? &first : nullptr, &c);
    if (!s.ok()) return s;
    size_ = (slots - 1) * kChunk + c.data.size();
    return IOStatus::OK();
  }

  uint64_t size() const { return size_; }

  // Reads `n` bytes at logical `offset` into `scratch`; fewer at the end of the file.
  IOStatus Read(uint64_t offset, size_t n, const IOOptions&, Slice* result, char* scratch) {
    size_t done = 0;
    if (offset < size_) {
      n = static_cast<size_t>(std::min<uint64_t>(n, size_ - offset));
    } else {
      n = 0;
    }
    while (done < n) {
      uint64_t at = offset + done;
      uint64_t chunk = at / kChunk;
      Chunk c;
      IOStatus s = Open(chunk, nullptr, &c);
      if (!s.ok()) return s;
      uint64_t within = at % kChunk;
      if (within >= c.data.size()) break;
      size_t take = static_cast<size_t>(std::min<uint64_t>(n - done, c.data.size() - within));
      memcpy(scratch + done, c.data.data() + within, take);
      done += take;
    }
    *result = Slice(scratch, done);
    return IOStatus::OK();
  }

 private:
  IOStatus ReadSlot(uint64_t chunk, std::string* out) {
    out->resize(kSlot);
    Slice got;
    IOStatus s = file_->Read(slot_of(chunk), kSlot, IOOptions(), &got, &(*out)[0], nullptr);
    if (!s.ok()) return s;
    if (got.data() != out->data()) memmove(&(*out)[0], got.data(), got.size());
    out->resize(got.size());
    return IOStatus::OK();
  }

  // Authenticates chunk `chunk` (its slot already read into `slot`, or read here).
  IOStatus Open(uint64_t chunk, const std::string* slot, Chunk* out) {
    std::string own;
    if (slot == nullptr) {
      IOStatus s = ReadSlot(chunk, &own);
      if (!s.ok()) return s;
      slot = &own;
    }
    uint64_t slots = (physical_ + kSlot - 1) / kSlot;
    bool last = chunk + 1 == slots;
    const char* ident = ident_.empty() ? slot->data() : ident_.data();
    // Records, newest generation first.
    struct Rec { const char* p; uint32_t len; uint32_t gen; };
    std::vector<Rec> recs;
    for (int r = 0; r < 2; r++) {
      uint64_t at = kChunk + r * kRecord;
      if (slot->size() >= at + kRecord) {
        const char* p = slot->data() + at;
        recs.push_back({p, le32(p), le32(p + 4)});
      }
    }
    std::sort(recs.begin(), recs.end(), [](const Rec& a, const Rec& b) { return a.gen > b.gen; });
    for (const Rec& r : recs) {
      if (r.len > kChunk || r.len > slot->size()) continue;
      if (!last && r.len != kChunk) continue;
      if (tde_rs_chunk_verify(ctx_, ident, kIdent, chunk, slot->data(), r.len, r.p) == 0) {
        out->data.assign(slot->data(), r.len);
        out->valid = true;
        return IOStatus::OK();
      }
    }
    return IOStatus::Corruption(
        "tde", name_ + ": chunk " + std::to_string(chunk) + " does not authenticate");
  }

  std::unique_ptr<FSRandomAccessFile> file_;
  void* ctx_;
  std::string name_;
  std::string ident_;
  uint64_t physical_ = 0;
  uint64_t size_ = 0;
};

class AuthRandomAccessFile : public FSRandomAccessFile {
 public:
  explicit AuthRandomAccessFile(std::unique_ptr<ChunkReader> r) : r_(std::move(r)) {}
  IOStatus Read(uint64_t offset, size_t n, const IOOptions& o, Slice* result,
                char* scratch, IODebugContext*) const override {
    return r_->Read(offset, n, o, result, scratch);
  }
  IOStatus GetFileSize(uint64_t* result) override {
    *result = r_->size();
    return IOStatus::OK();
  }
 private:
  std::unique_ptr<ChunkReader> r_;
};

class AuthSequentialFile : public FSSequentialFile {
 public:
  explicit AuthSequentialFile(std::unique_ptr<ChunkReader> r) : r_(std::move(r)) {}
  IOStatus Read(size_t n, const IOOptions& o, Slice* result, char* scratch,
                IODebugContext*) override {
    IOStatus s = r_->Read(pos_, n, o, result, scratch);
    if (s.ok()) pos_ += result->size();
    return s;
  }
  IOStatus PositionedRead(uint64_t offset, size_t n, const IOOptions& o, Slice* result,
                          char* scratch, IODebugContext*) override {
    return r_->Read(offset, n, o, result, scratch);
  }
  IOStatus Skip(uint64_t n) override {
    pos_ = std::min(pos_ + n, r_->size());
    return IOStatus::OK();
  }
 private:
  std::unique_ptr<ChunkReader> r_;
  uint64_t pos_ = 0;
};

class AuthWritableFile : public FSWritableFile {
 public:
  AuthWritableFile(std::unique_ptr<FSRandomRWFile> file, void* ctx, std::string name)
      : file_(std::move(file)), ctx_(ctx), name_(std::move(name)) {}
  ~AuthWritableFile() override {
    if (!closed_) {
      Close(IOOptions(), nullptr).PermitUncheckedError();
    }
  }

  IOStatus Append(const Slice& data, const IOOptions& o, IODebugContext* dbg) override {
    std::lock_guard<std::mutex> lock(mu_);
    const char* p = data.data();
    size_t left = data.size();
    while (left > 0) {
      uint64_t chunk = size_ / kChunk;
      size_t room = static_cast<size_t>(kChunk - tail_.size());
      size_t n = std::min(room, left);
      IOStatus s = file_->Write(slot_of(chunk) + tail_.size(), Slice(p, n), o, dbg);
      if (!s.ok()) return s;
      tail_.append(p, n);
      if (ident_.empty() && chunk == 0 && tail_.size() >= kIdent) ident_.assign(tail_.data(), kIdent);
      size_ += n;
      p += n;
      left -= n;
      if (tail_.size() == kChunk) {
        s = WriteRecord(o, dbg);
        if (!s.ok()) return s;
        tail_.clear();
        gen_ = 0;
        synced_ = -1;
        written_ = -1;
        recorded_ = 0;
      }
    }
    return IOStatus::OK();
  }
  IOStatus Append(const Slice& data, const IOOptions& o,
                  const ROCKSDB_NAMESPACE::DataVerificationInfo&, IODebugContext* dbg) override {
    return Append(data, o, dbg);
  }
  IOStatus Flush(const IOOptions& o, IODebugContext* dbg) override {
    std::lock_guard<std::mutex> lock(mu_);
    return WriteRecord(o, dbg);
  }
  // Sync may run while another thread appends (RocksDB's SyncWAL): the lock is held
  // through the sync, so the record it makes durable is known.
  IOStatus Sync(const IOOptions& o, IODebugContext* dbg) override {
    std::lock_guard<std::mutex> lock(mu_);
    IOStatus s = WriteRecord(o, dbg);
    if (!s.ok()) return s;
    s = file_->Sync(o, dbg);
    if (s.ok()) synced_ = written_;
    return s;
  }
  IOStatus Fsync(const IOOptions& o, IODebugContext* dbg) override {
    std::lock_guard<std::mutex> lock(mu_);
    IOStatus s = WriteRecord(o, dbg);
    if (!s.ok()) return s;
    s = file_->Fsync(o, dbg);
    if (s.ok()) synced_ = written_;
    return s;
  }
  IOStatus Close(const IOOptions& o, IODebugContext* dbg) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return IOStatus::OK();
    closed_ = true;
    IOStatus s = WriteRecord(o, dbg);
    IOStatus c = file_->Close(o, dbg);
    return s.ok() ? c : s;
  }
  uint64_t GetFileSize(const IOOptions&, IODebugContext*) override {
    std::lock_guard<std::mutex> lock(mu_);
    return size_;
  }
  IOStatus Truncate(uint64_t size, const IOOptions&, IODebugContext*) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (size == size_) return IOStatus::OK();
    return IOStatus::NotSupported("tde", "truncating an authenticated file");
  }
  bool IsSyncThreadSafe() const override { return true; }

 private:
  // Records the current chunk's bytes so far, in the record slot that does not hold the
  // last synced record.
  IOStatus WriteRecord(const IOOptions& o, IODebugContext* dbg) {
    if (tail_.empty() || recorded_ == tail_.size()) return IOStatus::OK();
    if (ident_.empty()) {
      return IOStatus::IOError("tde", name_ + ": the file header was not written first");
    }
    uint64_t chunk = size_ / kChunk;
    if (tail_.size() == kChunk) chunk = (size_ - 1) / kChunk;
    int slot = synced_ == 0 ? 1 : synced_ == 1 ? 0 : (written_ == 0 ? 1 : 0);
    char rec[kRecord] = {0};
    uint32_t len = static_cast<uint32_t>(tail_.size());
    memcpy(rec, &len, 4);
    memcpy(rec + 4, &gen_, 4);
    int32_t rc = tde_rs_chunk_seal(ctx_, ident_.data(), kIdent, chunk, tail_.data(), tail_.size(), rec);
    if (rc != 0) return IOStatus::IOError("tde", name_ + ": sealing a chunk record failed");
    IOStatus s = file_->Write(slot_of(chunk) + kChunk + slot * kRecord, Slice(rec, kRecord), o, dbg);
    if (!s.ok()) return s;
    gen_++;
    written_ = slot;
    recorded_ = tail_.size();
    return IOStatus::OK();
  }

  std::unique_ptr<FSRandomRWFile> file_;
  void* ctx_;
  std::string name_;
  std::string ident_;
  std::string tail_;
  uint64_t size_ = 0;
  uint32_t gen_ = 0;
  int synced_ = -1;
  int written_ = -1;
  size_t recorded_ = 0;
  bool closed_ = false;
  std::mutex mu_;
};

class TdeAuthFileSystem : public FileSystemWrapper {
 public:
  TdeAuthFileSystem(const std::shared_ptr<FileSystem>& target, std::shared_ptr<Context> ctx)
      : FileSystemWrapper(target), ctx_(std::move(ctx)) {}
  const char* Name() const override { return "TdeAuthFileSystem"; }

  IOStatus NewSequentialFile(const std::string& fname, const FileOptions& options,
                             std::unique_ptr<FSSequentialFile>* result,
                             IODebugContext* dbg) override {
    std::unique_ptr<ChunkReader> r;
    IOStatus s = Reader(fname, options, &r, dbg);
    if (s.ok()) result->reset(new AuthSequentialFile(std::move(r)));
    return s;
  }
  IOStatus NewRandomAccessFile(const std::string& fname, const FileOptions& options,
                               std::unique_ptr<FSRandomAccessFile>* result,
                               IODebugContext* dbg) override {
    std::unique_ptr<ChunkReader> r;
    IOStatus s = Reader(fname, options, &r, dbg);
    if (s.ok()) result->reset(new AuthRandomAccessFile(std::move(r)));
    return s;
  }
  IOStatus NewWritableFile(const std::string& fname, const FileOptions& options,
                           std::unique_ptr<FSWritableFile>* result,
                           IODebugContext* dbg) override {
    FileOptions plain(options);
    plain.use_direct_writes = false;
    plain.use_mmap_writes = false;
    {
      // Create or empty the file, as NewWritableFile does.
      std::unique_ptr<FSWritableFile> empty;
      IOStatus s = target()->NewWritableFile(fname, plain, &empty, dbg);
      if (!s.ok()) return s;
      s = empty->Close(options.io_options, dbg);
      if (!s.ok()) return s;
    }
    std::unique_ptr<FSRandomRWFile> rw;
    IOStatus s = target()->NewRandomRWFile(fname, plain, &rw, dbg);
    if (!s.ok()) return s;
    result->reset(new AuthWritableFile(std::move(rw), ctx_->ctx, fname));
    return IOStatus::OK();
  }
  IOStatus ReopenWritableFile(const std::string& fname, const FileOptions&,
                              std::unique_ptr<FSWritableFile>*, IODebugContext*) override {
    return IOStatus::NotSupported("tde", fname + ": reopening an authenticated file for append");
  }
  IOStatus ReuseWritableFile(const std::string& fname, const std::string&, const FileOptions&,
                             std::unique_ptr<FSWritableFile>*, IODebugContext*) override {
    return IOStatus::NotSupported("tde", fname + ": recycling an authenticated file");
  }
  IOStatus NewRandomRWFile(const std::string& fname, const FileOptions&,
                           std::unique_ptr<FSRandomRWFile>*, IODebugContext*) override {
    return IOStatus::NotSupported("tde", fname + ": random writes to an authenticated file");
  }
  IOStatus GetFileSize(const std::string& fname, const IOOptions& options, uint64_t* size,
                       IODebugContext* dbg) override {
    std::unique_ptr<ChunkReader> r;
    FileOptions fo;
    fo.io_options = options;
    IOStatus s = Reader(fname, fo, &r, dbg);
    if (s.ok()) *size = r->size();
    return s;
  }
  IOStatus GetChildrenFileAttributes(const std::string& dir, const IOOptions& options,
                                     std::vector<FileAttributes>* result,
                                     IODebugContext* dbg) override {
    IOStatus s = target()->GetChildrenFileAttributes(dir, options, result, dbg);
    if (!s.ok()) return s;
    for (auto& a : *result) {
      uint64_t size = 0;
      if (a.size_bytes > 0 && GetFileSize(dir + "/" + a.name, options, &size, dbg).ok()) {
        a.size_bytes = size;
      }
    }
    return IOStatus::OK();
  }

 private:
  IOStatus Reader(const std::string& fname, const FileOptions& options,
                  std::unique_ptr<ChunkReader>* out, IODebugContext* dbg) {
    FileOptions plain(options);
    plain.use_direct_reads = false;
    plain.use_mmap_reads = false;
    uint64_t physical = 0;
    IOStatus s = target()->GetFileSize(fname, options.io_options, &physical, dbg);
    if (!s.ok()) return s;
    std::unique_ptr<FSRandomAccessFile> file;
    s = target()->NewRandomAccessFile(fname, plain, &file, dbg);
    if (!s.ok()) return s;
    std::unique_ptr<ChunkReader> r(new ChunkReader(std::move(file), ctx_->ctx, fname));
    s = r->Init(physical);
    if (!s.ok()) return s;
    *out = std::move(r);
    return IOStatus::OK();
  }

  std::shared_ptr<Context> ctx_;
};

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
rocksdb_env_t* tde_shim_env_create(void* ctx) {
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
    auto provider = std::make_shared<TdeProvider>(context);
    Env* base = Env::Default();
    if (base == nullptr) return nullptr;
    auto authenticated = std::make_shared<TdeAuthFileSystem>(base->GetFileSystem(), context);
    auto encrypted = ROCKSDB_NAMESPACE::NewEncryptedFS(authenticated, provider);
    if (!encrypted) return nullptr;
    auto fs = std::make_shared<TdeFileSystem>(encrypted);
    std::unique_ptr<Env> env(new CompositeEnvWrapper(base, fs));
    fs->env_ = env.get();
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

}  // extern "C"
