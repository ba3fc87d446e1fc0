// One file on its way to the server: over tus (resumable) or, when the server has no tus,
// one multipart POST. Renders its own list item; every name is set as text, never as HTML.

import { CONNECTION_LOST, authHeaders, callJson, errorFromBody } from "./api.js";
import { SpeedMeter, bytes, duration, rate } from "./format.js";

const RETRY_DELAYS_MS = [0, 1000, 2000, 4000, 8000, 15000, 30000, 60000];
const RETRIED_STATUSES = [409, 423, 429, 500, 502, 503, 504];  // not 507: a full disk stays full
// several parallel PATCH streams (joined by tus concatenation) help a long, fat network
// path; below this size the extra requests cost more than they win
const PARALLEL_FROM_BYTES = 1024 ** 3;
const PARALLEL_PARTS = 3;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function tusError(error) {
  const response = error.originalResponse;
  const status = response ? response.getStatus() : 0;
  if (status) return errorFromBody(status, response.getBody() || "");
  return new Error(error.message && !/response code: 0|network|XHR/i.test(error.message)
    ? error.message : CONNECTION_LOST);
}

export class Transfer {
  constructor(file, { tus, onChange, onStored }) {
    this.file = file;
    this.useTus = tus;
    this.onChange = onChange;
    this.onStored = onStored;
    this.sent = 0;
    this.state = "starting";
    this.meter = new SpeedMeter();
    this.render();
  }

  render() {
    this.item = element("li");
    this.item.append(element("div", "name", this.file.name));
    this.bar = element("progress");
    this.bar.max = Math.max(1, this.file.size);
    this.bar.value = 0;
    this.bar.setAttribute("aria-label", `Upload of ${this.file.name}`);
    this.status = element("div", "status", "Starting…");
    this.status.setAttribute("aria-live", "polite");
    this.hash = element("div", "hash");
    const buttons = element("div", "row");
    this.pauseButton = element("button", "", "Pause");
    this.retryButton = element("button", "", "Retry");
    this.cancelButton = element("button", "", "Cancel");
    for (const button of [this.pauseButton, this.retryButton, this.cancelButton]) {
      button.type = "button";
      buttons.append(button);
    }
    this.retryButton.hidden = true;
    this.pauseButton.addEventListener("click", () => (this.state === "paused" ? this.resume() : this.pause()));
    this.retryButton.addEventListener("click", () => this.resume());
    this.cancelButton.addEventListener("click", () => this.cancel());
    this.item.append(this.bar, this.status, this.hash, buttons);
  }

  setState(state, text, kind = "") {
    this.state = state;
    this.item.dataset.state = state;
    this.status.textContent = text;
    this.status.className = `status ${kind}`;
    const active = ["starting", "uploading", "retrying"].includes(state);
    this.pauseButton.hidden = !(active || state === "paused");
    this.pauseButton.textContent = state === "paused" ? (this.useTus ? "Resume" : "Start again") : "Pause";
    this.retryButton.hidden = state !== "error";
    this.cancelButton.hidden = state === "done" || state === "cancelled";
    this.onChange();
  }

  get active() {
    return ["starting", "uploading", "retrying"].includes(this.state);
  }

  async start() {
    this.setState("starting", "Starting…");
    if (this.useTus) await this.startTus();
    else this.startMultipart();
  }

  async startTus() {
    const file = this.file;
    const metadata = { filename: file.name };
    if (file.type) metadata.filetype = file.type;
    this.upload = new window.tus.Upload(file, {
      endpoint: new URL("/tus/", location.href).href,
      metadata,
      retryDelays: RETRY_DELAYS_MS,
      storeFingerprintForResuming: true,
      removeFingerprintOnSuccess: true,
      parallelUploads: file.size >= PARALLEL_FROM_BYTES ? PARALLEL_PARTS : 1,
      onBeforeRequest: (request) => {
        for (const [name, value] of Object.entries(authHeaders(request.getURL()))) {
          request.setHeader(name, value);
        }
      },
      onProgress: (sent) => this.progress(sent),
      onShouldRetry: (error, attempt) => this.shouldRetry(error, attempt),
      onSuccess: () => this.uploaded(this.upload.url.replace(/\/+$/, "").split("/").pop()),
      onError: (error) => this.failed(tusError(error)),
    });
    const previous = await this.upload.findPreviousUploads();
    if (previous.length) {
      previous.sort((a, b) => String(a.creationTime).localeCompare(String(b.creationTime)));
      this.upload.resumeFromPreviousUpload(previous[previous.length - 1]);
      this.resumed = true;
    }
    this.upload.start();
  }

  shouldRetry(error, attempt) {
    const response = error.originalResponse;
    const status = response ? response.getStatus() : 0;
    const retry = !status || RETRIED_STATUSES.includes(status);
    if (retry) {
      const delay = RETRY_DELAYS_MS[Math.min(attempt, RETRY_DELAYS_MS.length - 1)] / 1000;
      this.meter.reset();
      this.setState("retrying", `${tusError(error).message}: trying again in ${delay} s ` +
                    `(attempt ${attempt + 1} of ${RETRY_DELAYS_MS.length})`, "error");
    }
    return retry;
  }

  startMultipart() {
    const form = new FormData();
    form.append("file", this.file, this.file.name);
    const request = new XMLHttpRequest();
    request.open("POST", "/upload");
    for (const [name, value] of Object.entries(authHeaders("/upload"))) request.setRequestHeader(name, value);
    request.upload.addEventListener("progress", (event) => this.progress(event.loaded));
    request.addEventListener("load", () => {
      if (request.status === 201) this.stored(JSON.parse(request.responseText).files[0]);
      else this.failed(errorFromBody(request.status, request.responseText));
    });
    request.addEventListener("error", () => this.failed(new Error(CONNECTION_LOST)));
    request.send(form);
    this.request = request;
  }

  progress(sent) {
    this.sent = Math.min(sent, this.file.size);
    this.meter.add(this.sent);
    const speed = this.meter.bytesPerSecond;
    const percent = this.file.size ? Math.floor((100 * this.sent) / this.file.size) : 100;
    const left = speed > 0 ? `, ${duration((this.file.size - this.sent) / speed)} left` : "";
    this.bar.value = this.sent;
    this.speed = speed;
    this.setState("uploading", `${percent} % — ${bytes(this.sent)} of ${bytes(this.file.size)}` +
                  `${speed > 0 ? `, ${rate(speed)}` : ""}${left}${this.resumed ? " (resumed)" : ""}`);
  }

  async uploaded(fileId) {
    this.setState("uploading", "Uploaded; reading its SHA-256…");
    try {
      this.stored(await callJson(`/files/${encodeURIComponent(fileId)}`));
    } catch (error) {
      this.failed(error);
    }
  }

  stored(record) {
    this.record = record;
    this.sent = this.file.size;
    this.bar.value = this.bar.max;
    this.speed = 0;
    this.hash.textContent = `SHA-256 ${record.sha256}`;
    this.setState("done", `Stored: ${bytes(record.size)}`, "done");
    this.onStored(record);
  }

  failed(error) {
    this.speed = 0;
    this.setState("error", error.message, "error");
  }

  pause() {
    if (this.upload) this.upload.abort();
    if (this.request) this.request.abort();
    this.speed = 0;
    this.meter.reset();
    this.setState("paused", `Paused at ${bytes(this.sent)} of ${bytes(this.file.size)}`);
  }

  resume() {
    this.meter.reset();
    if (this.upload) {
      this.setState("starting", "Resuming…");
      this.upload.start();  // asks the server for its offset (HEAD), then goes on from there
    } else {
      this.start();
    }
  }

  async cancel() {
    this.speed = 0;
    if (this.request) this.request.abort();
    if (this.upload) {
      try {
        await this.upload.abort(true);  // DELETE on the server, and forget the fingerprint
      } catch (error) { /* it was never created, or is gone already */ }
    }
    this.setState("cancelled", "Cancelled");
  }
}
