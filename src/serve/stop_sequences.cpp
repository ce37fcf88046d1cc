#include "mpx/serve/stop_sequences.h"

#include <algorithm>
#include <utility>

namespace mpx::serve {

namespace {
bool ends_with(const std::vector<std::int32_t>& tokens, const std::vector<std::int32_t>& tail) {
  return tail.size() <= tokens.size() && std::equal(tail.rbegin(), tail.rend(), tokens.rbegin());
}
}  // namespace

StopMatcher::StopMatcher(std::vector<std::vector<std::int32_t>> stops) : stops_(std::move(stops)) {
  std::erase_if(stops_, [](const std::vector<std::int32_t>& s) { return s.empty(); });
}

std::vector<std::int32_t> StopMatcher::push(std::int32_t token) {
  if (stops_.empty()) return {token};
  pending_.push_back(token);
  for (const std::vector<std::int32_t>& s : stops_) {
    if (ends_with(pending_, s)) {
      matched_ = s.size();
      std::vector<std::int32_t> before(pending_.begin(), pending_.end() - static_cast<std::ptrdiff_t>(s.size()));
      pending_.clear();
      return before;
    }
  }
  // Keep the longest tail of what is pending that a stop sequence still begins with.
  std::size_t keep = 0;
  for (const std::vector<std::int32_t>& s : stops_) {
    for (std::size_t n = std::min(pending_.size(), s.size() - 1); n > keep; --n) {
      if (std::equal(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(n), pending_.end() - static_cast<std::ptrdiff_t>(n))) {
        keep = n;
        break;
      }
    }
  }
  std::vector<std::int32_t> out(pending_.begin(), pending_.end() - static_cast<std::ptrdiff_t>(keep));
  pending_.erase(pending_.begin(), pending_.end() - static_cast<std::ptrdiff_t>(keep));
  return out;
}

std::vector<std::int32_t> StopMatcher::flush() { return std::exchange(pending_, {}); }

}  // namespace mpx::serve
