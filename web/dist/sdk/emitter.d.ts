/** A small typed event emitter (no DOM needed, so the SDK runs in Node too). */
export declare class Emitter<Events extends Record<string, unknown>> {
    private readonly handlers;
    /** Calls `handler` for every `event`; returns a function that stops it. */
    on<K extends keyof Events>(event: K, handler: (value: Events[K]) => void): () => void;
    /** Stops calling `handler` for `event`. */
    off<K extends keyof Events>(event: K, handler: (value: Events[K]) => void): void;
    protected emit<K extends keyof Events>(event: K, value: Events[K]): void;
}
