/**
 * Exponential backoff with full jitter and a cap, reset on success: the
 * delay before attempt n is random in [base·2^n / 2, min(cap, base·2^n)], so
 * a room's viewers that lost the server together do not come back together.
 */

/** Backoff settings; every field has a default. */
export interface BackoffOptions {
  /** First delay, ms (default 500). */
  initialMs?: number;
  /** Largest delay, ms (default 20,000). */
  maxMs?: number;
  /** Growth per failed attempt (default 2). */
  factor?: number;
  /** A number in [0, 1) (default Math.random); tests pass their own. */
  random?: () => number;
}

/** The delays of successive failed attempts; `reset()` after a success. */
export class Backoff {
  private attempt = 0;
  private readonly initialMs: number;
  private readonly maxMs: number;
  private readonly factor: number;
  private readonly random: () => number;

  constructor(options: BackoffOptions = {}) {
    this.initialMs = Math.max(1, options.initialMs ?? 500);
    this.maxMs = Math.max(this.initialMs, options.maxMs ?? 20_000);
    this.factor = Math.max(1, options.factor ?? 2);
    this.random = options.random ?? Math.random;
  }

  /** Failed attempts since the last reset. */
  get attempts(): number {
    return this.attempt;
  }

  /** The delay before the next attempt, ms; counts one more failure. */
  next(): number {
    const ceiling = Math.min(this.maxMs, this.initialMs * Math.pow(this.factor, this.attempt));
    this.attempt = Math.min(this.attempt + 1, 64);
    // Half fixed, half random: never a zero delay, still spread out.
    return Math.round(ceiling / 2 + (ceiling / 2) * this.random());
  }

  /** A success: the next failure starts from the first delay again. */
  reset(): void {
    this.attempt = 0;
  }
}
