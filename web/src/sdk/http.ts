/** Requests to the API with its error shape turned into {@link ApiError}. */
import { ApiError } from "./types.js";

/** The `fetch` the SDK uses (injected in tests). */
export type Fetch = typeof fetch;

/** Joins the API's base URL (`https://api.example` or "" for this origin) and a path. */
export function apiUrl(baseUrl: string, path: string): string {
  return baseUrl.replace(/\/+$/, "") + path;
}

/** A random key for `idempotency_key` (reused on every retry of one send). */
export function newIdempotencyKey(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  let key = "";
  for (let i = 0; i < 32; i++) key += Math.floor(Math.random() * 16).toString(16);
  return key;
}

/** Reads an answer: JSON on success, else an {@link ApiError} with the API's code. */
export async function readAnswer<T>(response: Response): Promise<T> {
  const text = await response.text();
  let body: unknown = undefined;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    body = undefined;
  }
  if (response.ok) return body as T;
  const error = (body as { error?: { code?: string; message?: string } } | undefined)?.error;
  const retryAfter = Number(response.headers.get("retry-after"));
  throw new ApiError(
    response.status,
    error?.code ?? "http_" + response.status,
    error?.message ?? response.statusText ?? "request failed",
    Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : undefined,
  );
}

/** `fetch` whose network failures become `ApiError(0, "network")`. */
export async function request(fetchFn: Fetch, url: string, init: RequestInit): Promise<Response> {
  try {
    return await fetchFn(url, init);
  } catch (error) {
    if ((error as { name?: string })?.name === "AbortError") throw error;
    throw new ApiError(0, "network", String((error as Error)?.message ?? error));
  }
}

/** Headers with the bearer token when there is one. */
export function authHeaders(token: string | undefined, json: boolean): Record<string, string> {
  const headers: Record<string, string> = {};
  if (token) headers["Authorization"] = "Bearer " + token;
  if (json) headers["Content-Type"] = "application/json";
  return headers;
}

/** Waits `ms`, or less when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done);
  });
}
