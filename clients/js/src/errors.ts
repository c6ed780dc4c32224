/**
 * Every error the client reports, in rejected promises and `error` events, is a
 * `SwitchboardError`. `code` is one of the server's error codes (`bad_token`, `forbidden`,
 * `rate_limited`, …) or one of the client's own:
 *
 * - `disconnected`: the request could not be sent, or its connection closed before the reply.
 * - `timeout`: no reply within `requestTimeout`.
 * - `unsubscribed`: the subscription ended before the request was answered.
 * - `token`: `getToken()` threw or returned something that is not a string.
 * - `token_expired`: the server closed with 4401 and there is no `getToken` to get another.
 * - `connection_refused`: the server closed with 4403 (invalid token or forbidden).
 * - `bad_frame`: the server sent something that is not a JSON object.
 */
export class SwitchboardError extends Error {
  /** Machine-readable code; match on this, not on `message`. */
  readonly code: string;
  /** The WebSocket close code, for errors caused by a close. */
  readonly closeCode: number | undefined;
  /** The channel concerned, when there is one. */
  readonly channel: string | undefined;
  /** The underlying error, e.g. what `getToken()` threw. */
  readonly cause: unknown;

  constructor(
    code: string,
    message: string,
    extra: { closeCode?: number; channel?: string; cause?: unknown } = {},
  ) {
    super(message);
    this.name = 'SwitchboardError';
    this.code = code;
    this.closeCode = extra.closeCode;
    this.channel = extra.channel;
    this.cause = extra.cause;
  }
}
