// Calls to the server this page came from. The token lives in sessionStorage (this tab
// only) and is only ever attached to a request for this page's own origin.

const TOKEN_KEY = "spillway-token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function sameOrigin(url) {
  return new URL(url, location.href).origin === location.origin;
}

/** The Authorization header for ``url``; throws rather than send the token elsewhere. */
export function authHeaders(url) {
  if (!sameOrigin(url)) {
    throw new Error(`refusing to send a request to another origin (${new URL(url, location.href).origin})`);
  }
  return token() ? { Authorization: `Bearer ${token()}` } : {};
}

export class ServerError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The server's own words for a refusal: its JSON error's message, status and code. */
export function errorFromBody(status, bodyText) {
  try {
    const error = JSON.parse(bodyText).error;
    if (error && error.message) {
      return new ServerError(status, error.code, `${error.message} (${status} ${error.code})`);
    }
  } catch (notJson) { /* fall through: a proxy's HTML page, an empty body */ }
  return new ServerError(status, "", `the server answered ${status}`);
}

export const CONNECTION_LOST = "cannot reach the server (connection lost?)";

export async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, cache: "no-store", credentials: "omit",
                                   headers: { ...authHeaders(path), ...(options.headers || {}) } });
  } catch (networkError) {
    throw new Error(CONNECTION_LOST);
  }
  if (!response.ok) throw errorFromBody(response.status, await response.text());
  return response;
}

export async function callJson(path, options = {}) {
  const response = await call(path, options);
  return response.status === 204 ? null : response.json();
}
