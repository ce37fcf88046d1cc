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

void become_background_thread() {
  setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), 19);
  omp_set_num_threads(1);
}

// What queues up within kGatherSeconds runs as one reference batch: nobody waits for the shadow, and one
// forward pass of 16 images costs a third of 16 passes of one.
ShadowComparer::ShadowComparer(std::unique_ptr<ModelVariant> reference, std::size_t capacity, Observer observer)
    : reference_(std::move(reference)),
      observer_(std::move(observer)),
      batch_pixels_(static_cast<std::size_t>(reference_->max_batch() * reference_->pixels_per_image())),
      batch_reference_(static_cast<std::size_t>(reference_->max_batch() * reference_->classes())),
      queue_(capacity, {kGatherSeconds, reference_->max_batch(), [](const Item& item) { return item.rows; }},
             [this](std::vector<Item>& items) { compare(items); }) {}

bool ShadowComparer::submit(const std::string& variant, std::vector<float> pixels, std::int64_t rows,
                            std::vector<float> logits) {
  return queue_.submit({variant, std::move(pixels), std::move(logits), rows});
}

void ShadowComparer::compare(std::vector<Item>& items) {
  const std::int64_t classes = reference_->classes(), pixels = reference_->pixels_per_image();
  const std::int64_t capacity = reference_->max_batch();
  std::int64_t images = 0;
  for (const Item& item : items) images += item.rows;
  if (images <= capacity) {
    std::int64_t row = 0;
    for (const Item& item : items) {
      std::copy(item.pixels.begin(), item.pixels.end(), batch_pixels_.begin() + row * pixels);
      row += item.rows;
    }
    reference_->infer(batch_pixels_.data(), images, batch_reference_.data());
    row = 0;
    for (const Item& item : items) {
      observer_(compare_logits(item.variant, item.logits.data(), batch_reference_.data() + row * classes, item.rows, classes));
      row += item.rows;
    }
    return;
  }
  const Item& item = items.front();  // one request of more images than a reference batch: in pieces
  for (std::int64_t first = 0; first < item.rows; first += capacity) {
    const std::int64_t rows = std::min(capacity, item.rows - first);
    std::copy_n(item.pixels.begin() + first * pixels, rows * pixels, batch_pixels_.begin());
    reference_->infer(batch_pixels_.data(), rows, batch_reference_.data());
    observer_(compare_logits(item.variant, item.logits.data() + first * classes, batch_reference_.data(), rows, classes));
  }
}

}  // namespace mpx::serve
