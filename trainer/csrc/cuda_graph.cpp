// CUDA graph capture and replay for the trainer (tch 0.24 does not expose them).
//
// A thin C ABI over at::cuda::CUDAGraph: the Rust side (trainer/src/graph.rs) runs its training
// step once with the graph's side stream current ("warm-up", executed) and once under capture
// (recorded, not executed), then replays the recording. libtorch's caching allocator serves the
// captured step from the graph's private memory pool, so the tensors it allocates keep their
// addresses across replays. Every entry point catches C++ exceptions and reports them as a
// message, never letting them cross into Rust. Only functions exported by libtorch and c10 are
// called (no inline CUDA runtime calls), so the binary needs no direct libcudart link.
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <cstring>
#include <exception>
#include <optional>

namespace {
void put_err(char* err, size_t len, const char* msg) {
  if (err != nullptr && len > 0) {
    std::strncpy(err, msg, len - 1);
    err[len - 1] = '\0';
  }
}
}  // namespace

struct SlbGraph {
  c10::cuda::CUDAStream side;
  at::cuda::CUDAGraph graph;
  // The stream that was current before `slb_graph_enter`, restored by `slb_graph_exit`.
  std::optional<c10::cuda::CUDAStream> previous;
  bool capturing = false;

  explicit SlbGraph(int device)
      : side(c10::cuda::getStreamFromPool(/*isHighPriority=*/false,
                                          static_cast<c10::DeviceIndex>(device))) {}
};

extern "C" {

SlbGraph* slb_graph_new(int device, char* err, size_t len) {
  try {
    return new SlbGraph(device);
  } catch (const std::exception& e) {
    put_err(err, len, e.what());
    return nullptr;
  }
}

// Frees the graph, then returns the cached blocks of the allocator (its private pool
// included) to the device, so that the next capture starts from free memory.
void slb_graph_free(SlbGraph* g) {
  try {
    delete g;
    c10::cuda::CUDACachingAllocator::emptyCache();
  } catch (...) {
  }
}

// Waits for the device, makes the side stream current and, if `capture`, begins capturing.
int slb_graph_enter(SlbGraph* g, int capture, char* err, size_t len) {
  try {
    c10::cuda::device_synchronize();
    g->previous = c10::cuda::getCurrentCUDAStream(g->side.device_index());
    c10::cuda::setCurrentCUDAStream(g->side);
    if (capture != 0) {
      g->graph.capture_begin();
      g->capturing = true;
    }
    return 0;
  } catch (const std::exception& e) {
    if (g->previous) {
      c10::cuda::setCurrentCUDAStream(*g->previous);
      g->previous.reset();
    }
    put_err(err, len, e.what());
    return 1;
  }
}

// Ends the capture (if one is under way), waits for the side stream and restores the stream
// that was current before `slb_graph_enter`.
int slb_graph_exit(SlbGraph* g, char* err, size_t len) {
  int rc = 0;
  try {
    if (g->capturing) {
      g->capturing = false;
      g->graph.capture_end();
    }
    c10::cuda::device_synchronize();
  } catch (const std::exception& e) {
    put_err(err, len, e.what());
    rc = 1;
  }
  try {
    if (g->previous) {
      c10::cuda::setCurrentCUDAStream(*g->previous);
      g->previous.reset();
    }
  } catch (const std::exception& e) {
    put_err(err, len, e.what());
    rc = 1;
  }
  return rc;
}

// Launches the captured work on the current stream.
int slb_graph_replay(SlbGraph* g, char* err, size_t len) {
  try {
    g->graph.replay();
    return 0;
  } catch (const std::exception& e) {
    put_err(err, len, e.what());
    return 1;
  }
}

}  // extern "C"
