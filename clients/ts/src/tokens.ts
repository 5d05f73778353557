// Token storage for @parley/client.

import { fromJsonString, toJsonString } from "@bufbuild/protobuf";
import { TokensSchema, type Tokens } from "./gen/parley/v1/auth_pb.js";

/**
 * TokenStore keeps a session's tokens between calls (and, for a browser
 * app, between page loads). The client reads it before every call and
 * writes it after signing in, refreshing and signing out (undefined).
 */
export interface TokenStore {
  get(): Tokens | undefined | Promise<Tokens | undefined>;
  set(tokens: Tokens | undefined): void | Promise<void>;
}

/** memoryTokenStore keeps the tokens in memory only. */
export function memoryTokenStore(initial?: Tokens): TokenStore {
  let tokens = initial;
  return {
    get: () => tokens,
    set: (t) => {
      tokens = t;
    },
  };
}

/**
 * webStorageTokenStore keeps the tokens in a Web Storage object, such as
 * window.localStorage (the session survives reloads) or sessionStorage (one
 * tab), under key.
 */
export function webStorageTokenStore(storage: Storage, key = "parley.tokens"): TokenStore {
  return {
    get() {
      const json = storage.getItem(key);
      if (json === null) return undefined;
      try {
        return fromJsonString(TokensSchema, json);
      } catch {
        storage.removeItem(key);
        return undefined;
      }
    },
    set(t) {
      if (t === undefined) storage.removeItem(key);
      else storage.setItem(key, toJsonString(TokensSchema, t));
    },
  };
}
