// The stored files, a page at a time (GET /files?limit=&after=), with download and delete.

import { call, callJson, token } from "./api.js";
import { bytes, when } from "./format.js";

const PAGE_SIZE = 20;

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  return td;
}

function button(label, onClick) {
  const node = document.createElement("button");
  node.type = "button";
  node.textContent = label;
  node.addEventListener("click", onClick);
  return node;
}

export class FileList {
  constructor({ body, message, previous, next, refresh }) {
    Object.assign(this, { body, message, previousButton: previous, nextButton: next });
    this.cursors = [null];  // the `after` of each page seen so far; the last is this page's
    this.nextCursor = null;
    previous.addEventListener("click", () => { this.cursors.pop(); this.load(); });
    next.addEventListener("click", () => { this.cursors.push(this.nextCursor); this.load(); });
    refresh.addEventListener("click", () => this.load());
  }

  async load() {
    const after = this.cursors[this.cursors.length - 1];
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (after) query.set("after", after);
    try {
      const page = await callJson(`/files?${query}`);
      this.nextCursor = page.next;
      this.show(page.files);
      this.message.textContent = page.files.length ? "" : "No files stored yet.";
    } catch (error) {
      this.show([]);
      this.nextCursor = null;
      this.message.textContent = `Cannot list the files: ${error.message}`;
    }
    this.previousButton.disabled = this.cursors.length < 2;
    this.nextButton.disabled = !this.nextCursor;
  }

  show(files) {
    this.body.replaceChildren(...files.map((file) => this.row(file)));
  }

  row(file) {
    const tr = document.createElement("tr");
    tr.dataset.fileId = file.id;
    const actions = document.createElement("td");
    actions.className = "row";
    actions.append(this.downloadControl(file), button("Delete", (event) => this.remove(file, event.target)));
    tr.append(cell(file.filename, "name"), cell(bytes(file.size)), cell(file.sha256, "hash"),
              cell(when(file.created)), actions);
    return tr;
  }

  downloadControl(file) {
    if (!token()) {  // a plain link: the browser streams the file straight to disk
      const link = document.createElement("a");
      link.href = file.content_url;
      link.download = file.filename;
      link.textContent = "Download";
      return link;
    }
    // a link cannot carry the Authorization header: fetch it, then save what came
    return button("Download", async (event) => {
      const control = event.target;
      control.disabled = true;
      try {
        const blob = await (await call(file.content_url)).blob();
        const link = document.createElement("a");
        link.href = URL.createObjectURL(blob);
        link.download = file.filename;
        link.click();
        setTimeout(() => URL.revokeObjectURL(link.href), 60000);
      } catch (error) {
        this.message.textContent = `Cannot download ${file.filename}: ${error.message}`;
      }
      control.disabled = false;
    });
  }

  async remove(file, control) {
    if (control.dataset.armed !== "yes") {  // a second click confirms; no modal dialog
      control.dataset.armed = "yes";
      control.textContent = "Really delete?";
      return;
    }
    try {
      await call(`/files/${encodeURIComponent(file.id)}`, { method: "DELETE" });
      this.message.textContent = `Deleted ${file.filename}.`;
      await this.load();
    } catch (error) {
      this.message.textContent = `Cannot delete ${file.filename}: ${error.message}`;
    }
  }
}
