#include "mpx/serve/shadow.h"

#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>

namespace mpx::serve {

std::vector<int> top1(const float* logits, std::int64_t rows, std::int64_t classes) {
  std::vector<int> best(static_cast<std::size_t>(rows), -1);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* row = logits + r * classes;
    int arg = 0;
    bool finite = true;
    for (std::int64_t k = 0; k < classes; ++k) {
      if (std::isnan(row[k])) finite = false;
      if (row[k] > row[arg]) arg = static_cast<int>(k);
    }
    if (finite) best[static_cast<std::size_t>(r)] = arg;
  }
  return best;
}

ShadowComparison compare_logits(const std::string& variant, const float* candidate, const float* reference,
                                std::int64_t rows, std::int64_t classes) {
  ShadowComparison c;
  c.variant = variant;
  c.images = rows;
  c.reference_class = top1(reference, rows, classes);
  const std::vector<int> candidate_class = top1(candidate, rows, classes);
  for (std::int64_t r = 0; r < rows; ++r) {
    bool finite = true;
    for (std::int64_t k = 0; k < classes; ++k) {
      const float a = candidate[r * classes + k], b = reference[r * classes + k];
      if (!std::isfinite(a)) {
        finite = false;
        continue;
      }
      if (std::isfinite(b)) c.max_abs_logit_delta = std::max(c.max_abs_logit_delta, std::fabs(static_cast<double>(a) - b));
    }
    const std::size_t i = static_cast<std::size_t>(r);
    const bool agree = finite && candidate_class[i] >= 0 && candidate_class[i] == c.reference_class[i];
    c.agree.push_back(agree);
    c.agreed += agree;
    c.candidate_nonfinite += !finite;
  }
  return c;
}

ShadowComparer::ShadowComparer(std::unique_ptr<ModelVariant> reference, std::size_t capacity, Observer observer)
    : reference_(std::move(reference)), capacity_(capacity), observer_(std::move(observer)) {
  worker_ = std::thread([this] { work(); });
}

ShadowComparer::~ShadowComparer() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  worker_.join();
}

bool ShadowComparer::submit(const std::string& variant, std::vector<float> pixels, std::int64_t rows,
                            std::vector<float> logits) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (stopping_ || queue_.size() >= capacity_) {
    ++dropped_;
    return false;
  }
  queue_.push_back({variant, std::move(pixels), std::move(logits), rows});
  changed_.notify_all();
  return true;
}

std::int64_t ShadowComparer::queued_images_locked() const {
  std::int64_t images = 0;
  for (const Item& item : queue_) images += item.rows;
  return images;
}

std::uint64_t ShadowComparer::dropped() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return dropped_;
}

void ShadowComparer::drain() {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return queue_.empty() && !busy_; });
}

void ShadowComparer::work() {
  // Off the response path: the lowest CPU priority and one thread, so the variants answering requests
  // keep the cores (Linux gives each thread its own nice value).
  setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), 19);
  omp_set_num_threads(1);
  const std::int64_t classes = reference_->classes(), pixels = reference_->pixels_per_image();
  const std::int64_t capacity = reference_->max_batch();
  std::vector<float> batch_pixels(static_cast<std::size_t>(capacity * pixels));
  std::vector<float> reference(static_cast<std::size_t>(capacity * classes));
  std::vector<Item> items;
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;
    // What queues up within kGatherSeconds runs as one reference batch: nobody waits for the shadow,
    // and one forward pass of 16 images costs a third of 16 passes of one.
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(kGatherSeconds);
    while (!stopping_ && queued_images_locked() < capacity && std::chrono::steady_clock::now() < until) {
      changed_.wait_until(lock, until);
    }
    items.clear();
    std::int64_t images = 0;
    do {
      images += queue_.front().rows;
      items.push_back(std::move(queue_.front()));
      queue_.pop_front();
    } while (!queue_.empty() && images + queue_.front().rows <= capacity);
    busy_ = true;
    lock.unlock();
    try {
      if (images <= capacity) {
        std::int64_t row = 0;
        for (const Item& item : items) {
          std::copy(item.pixels.begin(), item.pixels.end(), batch_pixels.begin() + row * pixels);
          row += item.rows;
        }
        reference_->infer(batch_pixels.data(), images, reference.data());
        row = 0;
        for (const Item& item : items) {
          observer_(compare_logits(item.variant, item.logits.data(), reference.data() + row * classes, item.rows, classes));
          row += item.rows;
        }
      } else {  // one request of more images than a reference batch: in pieces
        const Item& item = items.front();
        for (std::int64_t first = 0; first < item.rows; first += capacity) {
          const std::int64_t rows = std::min(capacity, item.rows - first);
          std::copy_n(item.pixels.begin() + first * pixels, rows * pixels, batch_pixels.begin());
          reference_->infer(batch_pixels.data(), rows, reference.data());
          observer_(compare_logits(item.variant, item.logits.data() + first * classes, reference.data(), rows, classes));
        }
      }
    } catch (const std::exception&) {  // a comparison lost is counted, never a crash off the response path
      std::lock_guard<std::mutex> count(mutex_);
      dropped_ += items.size();
    }
    lock.lock();
    busy_ = false;
    changed_.notify_all();
  }
}

}  // namespace mpx::serve
