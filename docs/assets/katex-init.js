// Typesets $...$, $$...$$, \(...\) and \[...\] (arithmatex's output and the notebooks' Markdown)
// with the KaTeX shipped beside this file; runs again after each instant page load.
function aecoreRenderMath(body) {
  renderMathInElement(body, {
    delimiters: [
      { left: "$$", right: "$$", display: true },
      { left: "$", right: "$", display: false },
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
    throwOnError: false,
  });
}
if (typeof document$ !== "undefined") {
  document$.subscribe(({ body }) => aecoreRenderMath(body));
} else {
  document.addEventListener("DOMContentLoaded", () => aecoreRenderMath(document.body));
}
