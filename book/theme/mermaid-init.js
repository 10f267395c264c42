// Renders the book's ```mermaid blocks as diagrams (mermaid 11.17.2, vendored
// in theme/mermaid.min.js). mdBook emits them as code blocks; each becomes a
// <pre class="mermaid"> that mermaid draws in place, in the page's theme.
(function () {
  const blocks = document.querySelectorAll("code.language-mermaid");
  if (blocks.length === 0) return;
  for (const code of blocks) {
    const pre = document.createElement("pre");
    pre.className = "mermaid";
    pre.textContent = code.textContent;
    code.parentElement.replaceWith(pre);
  }
  const dark = ["coal", "navy", "ayu"].some((t) => document.documentElement.classList.contains(t));
  mermaid.initialize({ startOnLoad: false, theme: dark ? "dark" : "default" });
  mermaid.run({ querySelector: "pre.mermaid" });
})();
