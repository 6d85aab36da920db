// Data-parallel training over libtorch's own distributed engine, c10d (tch 0.24 exposes none of
// it). A thin C ABI: a TCPStore (the rendezvous: server or client), a process group on it
// (Gloo, or NCCL when this file is compiled with SLB_WITH_NCCL), and the three collectives the
// trainer needs (all-reduce of a sum, broadcast, barrier), plus the store's key/value calls that
// the fault reports use. Every entry point catches C++ exceptions and reports them as a message;
// none crosses into Rust. The Gloo declarations come from Debian's libgloo-dev (the wheel ships
// libtorch's compiled Gloo backend but not the headers); only pointers to Gloo types appear in
// the classes used here, so the header version does not change their layout.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef SLB_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {
void put_err(char* err, size_t len, const char* msg) {
  if (err != nullptr && len > 0) {
    std::strncpy(err, msg, len - 1);
    err[len - 1] = '\0';
  }
}

// c10::Error's what() carries a C++ backtrace after the first line; the message is enough.
void put_exc(char* err, size_t len, const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) {
    put_err(err, len, c->what_without_backtrace());
  } else {
    put_err(err, len, e.what());
  }
}
}  // namespace

struct SlbStore {
  c10::intrusive_ptr<c10d::Store> store;
  int port = 0;
};

struct SlbPg {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  // NCCL's work is waited for on the device (the current stream waits for NCCL's), which a
  // CUDA graph can capture; its timeout is enforced by ProcessGroupNCCL's watchdog. Gloo's is
  // waited for on the host, up to `timeout`.
  bool nccl = false;

  void wait(const c10::intrusive_ptr<c10d::Work>& w) const {
    if (nccl) {
      w->wait();
    } else {
      w->wait(timeout);
    }
  }
};

extern "C" {

// A TCPStore at host:port: the server (listening; `port` 0 picks a free one) when `is_server`,
// else a client that connects within `timeout_ms`. `prefix` (may be empty) namespaces the keys.
SlbStore* slb_store_new(const char* host, int port, int is_server, int world, int timeout_ms,
                        const char* prefix, char* err, size_t len) {
  try {
    c10d::TCPStoreOptions o;
    o.port = static_cast<std::uint16_t>(port);
    o.isServer = is_server != 0;
    o.numWorkers = std::nullopt;
    o.waitWorkers = false;
    o.timeout = std::chrono::milliseconds(timeout_ms);
    o.multiTenant = false;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), o);
    auto* s = new SlbStore();
    s->port = tcp->getPort();
    if (prefix != nullptr && prefix[0] != '\0') {
      s->store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    } else {
      s->store = tcp;
    }
    (void)world;
    return s;
  } catch (const std::exception& e) {
    put_exc(err, len, e);
    return nullptr;
  }
}

int slb_store_port(SlbStore* s) { return s->port; }

void slb_store_free(SlbStore* s) {
  try {
    delete s;
  } catch (...) {
  }
}

int slb_store_set(SlbStore* s, const char* key, const uint8_t* val, size_t n, char* err,
                  size_t len) {
  try {
    s->store->set(std::string(key), std::vector<uint8_t>(val, val + n));
    return 0;
  } catch (const std::exception& e) {
    put_exc(err, len, e);
    return 1;
  }
}

// 1 if `key` is set, 0 if not, -1 on error.
int slb_store_check(SlbStore* s, const char* key, char* err, size_t len) {
  try {
    return s->store->check({std::string(key)}) ? 1 : 0;
  } catch (const std::exception& e) {
    put_exc(err, len, e);
    return -1;
  }
}

// The value of `key` (waiting for it up to the store's timeout) into `out` (at most `cap`
// bytes; `*n` gets the full length).
int slb_store_get(SlbStore* s, const char* key, uint8_t* out, size_t cap, size_t* n, char* err,
                  size_t len) {
  try {
    auto v = s->store->get(std::string(key));
    *n = v.size();
    std::memcpy(out, v.data(), v.size() < cap ? v.size() : cap);
    return 0;
  } catch (const std::exception& e) {
    put_exc(err, len, e);
    return 1;
  }
}

// Adds `delta` to the counter `key`; its new value in `*value`.
int slb_store_add(SlbStore* s, const char* key, int64_t delta, int64_t* value, char* err,
                  size_t len) {
  try {
    *value = s->store->add(std::string(key), delta);
    return 0;
  } catch (const std::exception& e) {
    put_exc(err, len, e);
    return 1;
  }
}

// A process group of `world` ranks on the store: "gloo" (CPU and CUDA tensors; `host` the
// address this rank's Gloo device binds, "if:NAME" an interface, empty for libtorch's default)
// or "nccl" (CUDA).
SlbPg* slb_pg_new(SlbStore* s, const char* backend, const char* host, int rank, int world,
                  int timeout_ms, char* err, size_t len) {
  try {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    std::string b(backend);
    auto store = c10::make_intrusive<c10d::PrefixStore>(b + "/", s->store);
    auto* pg = new SlbPg();
    pg->timeout = timeout;
    if (b == "gloo") {
      auto o = c10d::ProcessGroupGloo::Options::create(timeout);
      // "if:NAME": the interface NAME (GLOO_SOCKET_IFNAME); else a host name or address.
      std::string h(host);
      if (h.rfind("if:", 0) == 0) {
        o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(h.substr(3)));
      } else if (h.empty()) {
        o->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      } else {
        o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(h));
      }
      pg->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, o);
#ifdef SLB_WITH_NCCL
    } else if (b == "nccl") {
      auto o = c10d::ProcessGroupNCCL::Options::create();
      o->timeout = timeout;
      pg->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, o);
      pg->nccl = true;
#endif
    } else {
      delete pg;
      put_err(err, len, ("this slb was built without the " + b + " backend").c_str());
      return nullptr;
    }
    return pg;
  } catch (const std::exception& e) {
    put_exc(err, len, e);
    return nullptr;
  }
}

void slb_pg_free(SlbPg* pg) {
  try {
    delete pg;
  } catch (...) {
  }
}

// Sums `t` over the ranks, in place (`t` is a `torch::Tensor*`, as tch hands them out).
int slb_pg_allreduce_sum(SlbPg* pg, void* t, char* err, size_t len) {
  try {
    std::vector<at::Tensor> v{*static_cast<at::Tensor*>(t)};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.timeout = pg->timeout;
    pg->wait(pg->backend->allreduce(v, o));
    return 0;
  } catch (const std::exception& e) {
    put_exc(err, len, e);
    return 1;
  }
}

// Copies rank `root`'s `t` into every rank's `t`.
int slb_pg_broadcast(SlbPg* pg, void* t, int root, char* err, size_t len) {
  try {
    std::vector<at::Tensor> v{*static_cast<at::Tensor*>(t)};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = pg->timeout;
    pg->wait(pg->backend->broadcast(v, o));
    return 0;
  } catch (const std::exception& e) {
    put_exc(err, len, e);
    return 1;
  }
}

int slb_pg_barrier(SlbPg* pg, char* err, size_t len) {
  try {
    c10d::BarrierOptions o;
    o.timeout = pg->timeout;
    pg->wait(pg->backend->barrier(o));
    return 0;
  } catch (const std::exception& e) {
    put_exc(err, len, e);
    return 1;
  }
}

}  // extern "C"
