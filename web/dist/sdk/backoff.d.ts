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
export declare class Backoff {
    private attempt;
    private readonly initialMs;
    private readonly maxMs;
    private readonly factor;
    private readonly random;
    constructor(options?: BackoffOptions);
    /** Failed attempts since the last reset. */
    get attempts(): number;
    /** The delay before the next attempt, ms; counts one more failure. */
    next(): number;
    /** A success: the next failure starts from the first delay again. */
    reset(): void;
}
