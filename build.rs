//! Compiles the C++ bridge into RocksDB's Env (src/ffi/rocksdb_shim.cc) against the
//! headers of the RocksDB that librocksdb-sys builds, with the flags it builds them with.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/ffi/rocksdb_shim.cc");
    let Ok(root) = std::env::var("DEP_ROCKSDB_CARGO_MANIFEST_DIR") else {
        panic!("librocksdb-sys did not export its source directory (DEP_ROCKSDB_CARGO_MANIFEST_DIR)");
    };
    let rocksdb = PathBuf::from(root).join("rocksdb");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("src/ffi/rocksdb_shim.cc")
        .include(rocksdb.join("include"))
        .include(&rocksdb)
        .flag("-std=c++20")
        .flag("-include")
        .flag("cstdint")
        .define("NDEBUG", Some("1"))
        .define("HAVE_ALIGNED_NEW", None)
        .define("HAVE_UINT128_EXTENSION", None)
        .flag_if_supported("-Wno-unused-parameter");
    if std::env::var_os("CARGO_FEATURE_TESTING").is_some() {
        build.define("TDE_TESTING", None);
    }
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" {
        build.define("OS_LINUX", None);
    }
    if std::env::var("CARGO_CFG_TARGET_FAMILY").is_ok_and(|f| f == "unix") {
        build
            .define("ROCKSDB_PLATFORM_POSIX", None)
            .define("ROCKSDB_LIB_IO_POSIX", None);
    }
    build.compile("tde_rocksdb_shim");
}
