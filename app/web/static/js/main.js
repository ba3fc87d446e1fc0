// The upload page: find out what the server offers (tokens? tus?), then wire the drop
// zone, the uploads and the list of stored files together.

import { callJson, setToken, token } from "./api.js";
import { bytes, duration, rate } from "./format.js";
import { FileList } from "./listing.js";
import { Transfer } from "./transfer.js";

const $ = (id) => document.getElementById(id);
const transfers = [];
let tusAvailable = false;

const files = new FileList({ body: $("files").tBodies[0], message: $("files-message"),
                             previous: $("files-previous"), next: $("files-next"),
                             refresh: $("files-refresh") });

async function discover() {
  try {  // no token needed: the server answers OPTIONS /tus/ to anyone (CORS preflight)
    const response = await fetch("/tus/", { method: "OPTIONS", cache: "no-store" });
    tusAvailable = Boolean(window.tus && window.tus.isSupported && response.headers.get("Tus-Version"));
    const maxSize = Number(response.headers.get("Tus-Max-Size"));
    $("mode").textContent = tusAvailable
      ? `Resumable uploads (tus)${maxSize ? `, up to ${bytes(maxSize)} a file` : ""}.`
      : "Uploads in one request each (this server offers no tus): an interrupted upload starts over.";
  } catch (error) {
    $("mode").textContent = "Cannot reach the server.";
  }
  const config = await callJson("/page/config").catch(() => ({ tokens_required: true }));
  $("token-section").hidden = !config.tokens_required && !token();
  $("token").value = token();
  return config;
}

function updateOverall() {
  const counted = transfers.filter((t) => t.state !== "cancelled");
  $("overall").hidden = counted.length === 0;
  const total = counted.reduce((sum, t) => sum + t.file.size, 0);
  const sent = counted.reduce((sum, t) => sum + t.sent, 0);
  const speed = counted.filter((t) => t.active).reduce((sum, t) => sum + (t.speed || 0), 0);
  const done = counted.filter((t) => t.state === "done").length;
  $("overall-bar").max = Math.max(1, total);
  $("overall-bar").value = sent;
  const left = speed > 0 ? `, ${rate(speed)}, ${duration((total - sent) / speed)} left` : "";
  $("overall-text").textContent = `${done} of ${counted.length} files done — ` +
    `${bytes(sent)} of ${bytes(total)}${left}`;
}

function addFiles(fileList) {
  for (const file of fileList) {
    const transfer = new Transfer(file, {
      tus: tusAvailable,
      onChange: updateOverall,
      onStored: () => { files.load(); showUnfinished(); },
    });
    transfers.push(transfer);
    $("uploads").append(transfer.item);
    transfer.start().catch((error) => transfer.failed(error));
  }
}

async function showUnfinished() {
  if (!tusAvailable) return;
  const stored = await window.tus.defaultOptions.urlStorage.findAllUploads();
  const running = new Set(transfers.filter((t) => t.state !== "done").map((t) => t.file.name));
  const waiting = stored.filter((u) => !running.has(u.metadata && u.metadata.filename));
  $("unfinished").hidden = waiting.length === 0;
  $("unfinished-list").replaceChildren(...waiting.map((u) => {
    const item = document.createElement("li");
    item.textContent = `${(u.metadata && u.metadata.filename) || "(no name)"} — ${bytes(u.size || 0)}, ` +
      `started ${new Date(u.creationTime).toLocaleString()}`;
    return item;
  }));
}

function wireDropZone() {
  const zone = $("drop-zone");
  const input = $("file-input");
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = "";
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    addFiles(event.dataTransfer.files);
  });
  // a file dropped next to the zone must not replace the page (and its uploads)
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken($("token").value.trim());
  files.load();
});
window.addEventListener("beforeunload", (event) => {
  if (transfers.some((t) => t.active)) event.preventDefault();  // "leave the page?"
});

wireDropZone();
const config = await discover();
if (config.tokens_required && !token()) {  // asking now would only earn a 401
  $("files-message").textContent = "Enter the token to see the stored files.";
  $("token").focus();
} else {
  files.load();
}
await showUnfinished();
