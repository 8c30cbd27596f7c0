// ThreadPool (kernels/cpu.h): a job is published under mu_ with a new
// generation number; the caller and the woken workers take chunk indices
// under mu_ until none is left, and the caller waits on done_cv_ until every
// chunk has finished. Before blocking on a condition variable, workers and
// the caller spin for up to kSpin on an atomic copy of the state they wait
// for: a decode step issues hundreds of short jobs back to back, and a futex
// sleep + wake costs tens of microseconds each time. Chunks are few (about four per thread), so taking them
// under the mutex costs nothing measurable next to a kernel chunk.
#include <sched.h>

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "kernels/cpu.h"

namespace dsv2::kernels {
namespace {

constexpr std::chrono::microseconds kSpin{50};

// Spins (PAUSE) while `busy()` holds, for at most kSpin.
template <typename Busy>
void SpinWhile(Busy busy) {
  const auto until = std::chrono::steady_clock::now() + kSpin;
  while (busy() && std::chrono::steady_clock::now() < until) _mm_pause();
}

}  // namespace

int AvailableCpuCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

ThreadPool::ThreadPool(int num_threads) : num_threads_(num_threads) {
  if (num_threads < 1) {
    std::fprintf(stderr, "ThreadPool: num_threads is %d; must be >= 1\n", num_threads);
    std::abort();
  }
  workers_.reserve(static_cast<size_t>(num_threads - 1));
  for (int i = 0; i < num_threads - 1; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    stopping_.store(true, std::memory_order_relaxed);
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::ParallelFor(size_t n, size_t grain, absl::FunctionRef<void(size_t, size_t)> fn) {
  if (n == 0) return;
  grain = std::max<size_t>(grain, 1);
  if (num_threads_ == 1 || n <= grain) {
    fn(0, n);
    return;
  }
  const size_t target_chunks = 4 * static_cast<size_t>(num_threads_);
  const size_t chunk = std::max(grain, (n + target_chunks - 1) / target_chunks);
  uint64_t generation;
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &fn;
    job_n_ = n;
    job_chunk_ = chunk;
    next_chunk_ = 0;
    chunks_total_ = (n + chunk - 1) / chunk;
    chunks_done_ = 0;
    generation = ++generation_;
    published_.store(generation, std::memory_order_release);
  }
  work_cv_.notify_all();
  RunChunks(generation);
  SpinWhile([&] { return finished_.load(std::memory_order_acquire) != generation; });
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [this] { return chunks_done_ == chunks_total_; });
  job_ = nullptr;
}

void ThreadPool::RunChunks(uint64_t generation) {
  std::unique_lock<std::mutex> lock(mu_);
  while (generation_ == generation && next_chunk_ < chunks_total_) {
    const size_t begin = next_chunk_++ * job_chunk_;
    const size_t end = std::min(job_n_, begin + job_chunk_);
    const absl::FunctionRef<void(size_t, size_t)>& fn = *job_;
    lock.unlock();
    fn(begin, end);
    lock.lock();
    if (++chunks_done_ == chunks_total_) {
      finished_.store(generation, std::memory_order_release);
      done_cv_.notify_all();
    }
  }
}

void ThreadPool::WorkerLoop() {
  uint64_t seen = 0;
  for (;;) {
    SpinWhile([&] {
      return published_.load(std::memory_order_acquire) == seen &&
             !stopping_.load(std::memory_order_relaxed);
    });
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    RunChunks(seen);
  }
}

}  // namespace dsv2::kernels
