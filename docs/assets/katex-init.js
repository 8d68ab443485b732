// Typesets the mathematics with the KaTeX shipped beside this file; runs again after each
// instant page load. Pages: arithmatex writes \(...\) and \[...\]. Notebooks (.jupyter-wrapper):
// their Markdown keeps $...$ and $$...$$, delimiters used there only, so that a lone dollar in a
// page (a shell variable in a docstring) is never read as mathematics.
const aecorePageMath = [
  { left: "\\(", right: "\\)", display: false },
  { left: "\\[", right: "\\]", display: true },
];
const aecoreNotebookMath = [
  { left: "$$", right: "$$", display: true },
  { left: "$", right: "$", display: false },
  ...aecorePageMath,
];
function aecoreRenderMath(body) {
  renderMathInElement(body, { delimiters: aecorePageMath, throwOnError: false });
  for (const notebook of body.querySelectorAll(".jupyter-wrapper")) {
    renderMathInElement(notebook, { delimiters: aecoreNotebookMath, throwOnError: false });
  }
}
if (typeof document$ !== "undefined") {
  document$.subscribe(({ body }) => aecoreRenderMath(body));
} else {
  document.addEventListener("DOMContentLoaded", () => aecoreRenderMath(document.body));
}
