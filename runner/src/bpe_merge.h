#pragma once
// The merge loop shared by the three BPE tokenizers.
//
// SentencePiece, tiktoken and Hugging Face BPE differ in how they rank a pair
// (piece score, rank of the merged bytes, position in the merge list) but all
// merge the same way: repeatedly join the adjacent pair with the best rank,
// the leftmost one on ties, until no adjacent pair can be merged.

#include <cstddef>
#include <optional>
#include <queue>
#include <vector>

namespace torchchat {

// A run of the input text [begin, begin + length) and its token id.
struct BpeSymbol {
  std::size_t begin = 0;
  std::size_t length = 0;
  int id = -1;
};

// What merging two neighbours would give: lower rank merges first.
struct BpeMerge {
  double rank = 0;
  int merged_id = -1;
};

// `merge_of(left, right)` returns the BpeMerge for a pair, or nullopt if the
// pair cannot be merged. O(n log n) in the number of symbols.
template <class MergeOf>
std::vector<BpeSymbol> bpe_merge(const std::vector<BpeSymbol>& initial, MergeOf&& merge_of) {
  struct Node {
    BpeSymbol symbol;
    int prev, next;
    bool alive = true;
  };
  struct Candidate {
    double rank;
    int left, right;
    std::size_t left_length, right_length;  // to detect stale candidates
    int merged_id;
    bool operator<(const Candidate& other) const {  // priority_queue top = best
      if (rank != other.rank) return rank > other.rank;
      return left > other.left;
    }
  };

  const int n = static_cast<int>(initial.size());
  std::vector<Node> nodes;
  nodes.reserve(initial.size());
  for (int i = 0; i < n; ++i) nodes.push_back({initial[i], i - 1, i + 1 < n ? i + 1 : -1});

  std::priority_queue<Candidate> queue;
  const auto consider = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    if (const std::optional<BpeMerge> m = merge_of(nodes[left].symbol, nodes[right].symbol)) {
      queue.push({m->rank, left, right, nodes[left].symbol.length, nodes[right].symbol.length, m->merged_id});
    }
  };
  for (int i = 0; i + 1 < n; ++i) consider(i, i + 1);

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Node& left = nodes[top.left];
    Node& right = nodes[top.right];
    if (!left.alive || !right.alive || left.next != top.right || left.symbol.length != top.left_length ||
        right.symbol.length != top.right_length) {
      continue;  // one side has merged with something else since
    }
    left.symbol.length += right.symbol.length;
    left.symbol.id = top.merged_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) nodes[right.next].prev = top.left;
    consider(left.prev, top.left);
    consider(top.left, left.next);
  }

  std::vector<BpeSymbol> result;
  for (int i = n > 0 ? 0 : -1; i >= 0; i = nodes[i].next) result.push_back(nodes[i].symbol);
  return result;
}

}  // namespace torchchat
