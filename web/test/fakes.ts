/** Test doubles: a scripted WebSocket and a fetch that answers from a handler. */

export class FakeSocket {
  static instances: FakeSocket[] = [];
  readyState = 0;
  sent: Record<string, unknown>[] = [];
  onmessage: ((event: { data: string }) => void) | null = null;
  onclose: (() => void) | null = null;
  onerror: (() => void) | null = null;
  closedByClient = false;

  constructor(readonly url: string) {
    FakeSocket.instances.push(this);
  }

  send(data: string): void {
    this.sent.push(JSON.parse(data));
  }

  close(): void {
    this.closedByClient = true;
    this.readyState = 3;
  }

  /** The server sends `message`. */
  push(message: Record<string, unknown>): void {
    this.readyState = 1;
    this.onmessage?.({ data: JSON.stringify(message) });
  }

  /** The server (or the network) closes the connection. */
  drop(): void {
    this.readyState = 3;
    this.onclose?.();
  }

  static reset(): void {
    FakeSocket.instances = [];
  }

  static last(): FakeSocket {
    return FakeSocket.instances[FakeSocket.instances.length - 1];
  }
}

export interface Call {
  url: string;
  init: RequestInit;
}

/** A fetch whose answers come from `handler`; every call is recorded. */
export function fakeFetch(handler: (call: Call) => Response | Promise<Response>) {
  const calls: Call[] = [];
  const fn = async (input: RequestInfo | URL, init: RequestInit = {}) => {
    const call = { url: String(input), init };
    calls.push(call);
    return handler(call);
  };
  return { fn: fn as typeof fetch, calls };
}

export function json(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}
