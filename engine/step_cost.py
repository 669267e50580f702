"""An online fit of how long an engine step takes: ``seconds = fixed + per_token * tokens``.

Workers publish the fit with their load, and the router predicts time to first token on each
prefill worker from that worker's own line instead of a configured guess: machines, models and
thread counts differ, and a worker that slows down (a neighbour took its cores) is seen as slower.

Weighted least squares over the steps seen so far, each older step weighing ``decay`` times less
(``decay=0.98``: about the last 50 steps count). Both coefficients are kept non-negative: when the
steps so far all had about the same size, the line goes through the origin instead.
"""

from __future__ import annotations


class StepCostFit:
    def __init__(self, decay: float = 0.98) -> None:
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.decay = decay
        self.num_steps = 0
        self.fixed_s = 0.0
        self.per_token_s = 0.0
        self._w = self._n = self._nn = self._t = self._nt = 0.0  # weighted sums

    def add(self, num_tokens: int, seconds: float) -> None:
        """Record one busy step of ``num_tokens`` tokens; refits."""
        if num_tokens <= 0 or seconds < 0:
            return
        d, n, t = self.decay, float(num_tokens), float(seconds)
        self._w = d * self._w + 1
        self._n = d * self._n + n
        self._nn = d * self._nn + n * n
        self._t = d * self._t + t
        self._nt = d * self._nt + n * t
        self.num_steps += 1
        self._refit()

    def predict_s(self, num_tokens: int) -> float:
        return self.fixed_s + self.per_token_s * num_tokens

    def _refit(self) -> None:
        w, n, nn, t, nt = self._w, self._n, self._nn, self._t, self._nt
        spread = w * nn - n * n  # w² × the weighted variance of the step sizes
        if spread > 1e-6 * w * nn:
            per_token = (w * nt - n * t) / spread
            fixed = (t - per_token * n) / w
            if per_token >= 0 and fixed >= 0:
                self.fixed_s, self.per_token_s = fixed, per_token
                return
            if per_token < 0:  # bigger steps were not slower: only a fixed cost shows
                self.fixed_s, self.per_token_s = t / w, 0.0
                return
        self.fixed_s, self.per_token_s = 0.0, nt / nn  # through the origin
