/** A small typed event emitter (no DOM needed, so the SDK runs in Node too). */
export class Emitter<Events extends Record<string, unknown>> {
  private readonly handlers: { [K in keyof Events]?: Set<(value: Events[K]) => void> } = {};

  /** Calls `handler` for every `event`; returns a function that stops it. */
  on<K extends keyof Events>(event: K, handler: (value: Events[K]) => void): () => void {
    let set = this.handlers[event];
    if (!set) {
      set = new Set();
      this.handlers[event] = set;
    }
    set.add(handler);
    return () => this.off(event, handler);
  }

  /** Stops calling `handler` for `event`. */
  off<K extends keyof Events>(event: K, handler: (value: Events[K]) => void): void {
    this.handlers[event]?.delete(handler);
  }

  protected emit<K extends keyof Events>(event: K, value: Events[K]): void {
    for (const handler of [...(this.handlers[event] ?? [])]) {
      try {
        handler(value);
      } catch (error) {
        // A page's handler bug must not stop the stream for the other handlers.
        console.error("danmaku: event handler failed", error);
      }
    }
  }
}
