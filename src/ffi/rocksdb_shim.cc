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

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

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
using ROCKSDB_NAMESPACE::FileSystemWrapper;
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
    auto encrypted = ROCKSDB_NAMESPACE::NewEncryptedFS(base->GetFileSystem(), provider);
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
