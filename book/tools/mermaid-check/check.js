#!/usr/bin/env node
// Parses every ```mermaid block of the book (book/src), README.md and docs/
// with the mermaid build the book ships (book/theme/mermaid.min.js, drawn in
// the reader's browser), so a diagram that would show a parse error instead
// of a picture fails CI. Prints one line per diagram; exits 1 if any fails.
//
//   npm ci --prefix book/tools/mermaid-check && node book/tools/mermaid-check/check.js

"use strict";
const fs = require("fs");
const path = require("path");
const { JSDOM } = require("jsdom");

const root = path.resolve(__dirname, "../../..");

function markdownFiles(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return markdownFiles(full);
    return entry.name.endsWith(".md") ? [full] : [];
  });
}

function diagrams(file) {
  const text = fs.readFileSync(file, "utf8");
  const found = [];
  const fence = /^```mermaid\n([\s\S]*?)^```/gm;
  let m;
  while ((m = fence.exec(text)) !== null) {
    const line = text.slice(0, m.index).split("\n").length;
    found.push({ where: `${path.relative(root, file)}:${line}`, code: m[1] });
  }
  return found;
}

// mermaid's browser bundle, in a DOM of its own. Its leading "use strict"
// would keep its top-level `var` out of the window, so it goes.
const dom = new JSDOM("<!doctype html><html><body></body></html>", {
  runScripts: "outside-only",
  pretendToBeVisual: true,
});
const bundle = fs.readFileSync(path.join(root, "book/theme/mermaid.min.js"), "utf8");
dom.window.eval(bundle.replace(/^"use strict";/, ""));
const mermaid = dom.window.mermaid;
if (!mermaid || typeof mermaid.parse !== "function") {
  console.error("error: book/theme/mermaid.min.js did not define mermaid.parse");
  process.exit(2);
}
mermaid.initialize({ startOnLoad: false });

const files = [
  ...markdownFiles(path.join(root, "book/src")),
  path.join(root, "README.md"),
  ...markdownFiles(path.join(root, "docs")),
];

(async () => {
  let failed = 0;
  let count = 0;
  for (const file of files.sort()) {
    for (const { where, code } of diagrams(file)) {
      count += 1;
      try {
        await mermaid.parse(code);
        console.log(`ok    ${where}`);
      } catch (e) {
        failed += 1;
        const message = String((e && e.message) || e).split("\n").slice(0, 3).join(" | ");
        console.log(`FAIL  ${where}: ${message}`);
      }
    }
  }
  if (count === 0) {
    console.error("error: no mermaid diagram found (is the book where it was?)");
    process.exit(2);
  }
  console.log(`${count - failed} of ${count} diagrams parse`);
  process.exit(failed ? 1 : 0);
})();
