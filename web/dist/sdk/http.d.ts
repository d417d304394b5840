/** The `fetch` the SDK uses (injected in tests). */
export type Fetch = typeof fetch;
/** Joins the API's base URL (`https://api.example` or "" for this origin) and a path. */
export declare function apiUrl(baseUrl: string, path: string): string;
/** A random key for `idempotency_key` (reused on every retry of one send). */
export declare function newIdempotencyKey(): string;
/** Reads an answer: JSON on success, else an {@link ApiError} with the API's code. */
export declare function readAnswer<T>(response: Response): Promise<T>;
/** `fetch` whose network failures become `ApiError(0, "network")`. */
export declare function request(fetchFn: Fetch, url: string, init: RequestInit): Promise<Response>;
/** Headers with the bearer token when there is one. */
export declare function authHeaders(token: string | undefined, json: boolean): Record<string, string>;
/** Waits `ms`, or less when `signal` aborts. */
export declare function sleep(ms: number, signal?: AbortSignal): Promise<void>;
