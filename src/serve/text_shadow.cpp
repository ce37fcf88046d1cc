#include "mpx/serve/text_shadow.h"

#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

namespace mpx::serve {

ShadowComparison compare_generation(const std::string& variant, const std::vector<StepLogits>& steps,
                                    const std::vector<float>& reference, std::int64_t vocabulary) {
  const auto tokens = static_cast<std::int64_t>(reference.size()) / vocabulary;
  ShadowComparison c;
  c.variant = variant;
  c.images = std::min<std::int64_t>(tokens, static_cast<std::int64_t>(steps.size()));
  c.reference_class = top1(reference.data(), c.images, vocabulary);
  for (std::int64_t j = 0; j < c.images; ++j) {
    const StepLogits& s = steps[static_cast<std::size_t>(j)];
    const float* row = reference.data() + j * vocabulary;
    for (const auto& [id, value] : s.largest) {
      if (std::isfinite(row[id])) c.max_abs_logit_delta = std::max(c.max_abs_logit_delta, std::fabs(static_cast<double>(value) - row[id]));
    }
    const bool agree = s.top1 >= 0 && s.top1 == c.reference_class[static_cast<std::size_t>(j)];
    c.agree.push_back(agree);
    c.agreed += agree;
    c.candidate_nonfinite += s.top1 < 0;
  }
  return c;
}

TextShadow::TextShadow(std::unique_ptr<artifacts::Generator> reference, std::size_t capacity, Observer observer)
    : reference_(std::move(reference)), capacity_(capacity), observer_(std::move(observer)) {
  worker_ = std::thread([this] { work(); });
}

TextShadow::~TextShadow() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  worker_.join();
}

bool TextShadow::submit(const std::string& variant, const TextGeneration& answered) {
  if (answered.generation.tokens.empty()) return true;  // nothing generated, nothing to compare
  std::lock_guard<std::mutex> lock(mutex_);
  if (stopping_ || queue_.size() >= capacity_) {
    ++dropped_;
    return false;
  }
  queue_.push_back({variant, answered.generation.prompt, answered.generation.tokens, answered.steps});
  changed_.notify_all();
  return true;
}

std::uint64_t TextShadow::dropped() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return dropped_;
}

void TextShadow::drain() {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return queue_.empty() && !busy_; });
}

ShadowComparison TextShadow::compare(const Item& item) {
  // Position P-1 of the prompt predicts the first new token, the j-th new token the (j+1)-th: the FP32
  // model reads the prompt and all but the last new token, and the logits from position P-1 on are the
  // references.
  std::vector<std::int32_t> sequence = item.prompt;
  sequence.insert(sequence.end(), item.tokens.begin(), item.tokens.end() - 1);
  const std::int64_t vocabulary = reference_->config().vocab_size;
  std::vector<float> reference;
  std::size_t position = 0;
  reference_->generate(sequence, {0, 0.0f, 0, 0}, {}, [&](const std::vector<float>& logits) {
    if (position++ + 1 >= item.prompt.size()) reference.insert(reference.end(), logits.begin(), logits.end());
  });
  return compare_generation(item.variant, item.steps, reference, vocabulary);
}

void TextShadow::work() {
  setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), 19);  // off the response path: the lowest priority
  omp_set_num_threads(1);
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;
    Item item = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    try {
      observer_(compare(item));
    } catch (const std::exception&) {  // a comparison lost is counted, never a crash off the response path
      std::lock_guard<std::mutex> count(mutex_);
      ++dropped_;
    }
    lock.lock();
    busy_ = false;
    changed_.notify_all();
  }
}

}  // namespace mpx::serve
