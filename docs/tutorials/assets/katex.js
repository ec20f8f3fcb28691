// Renders the math that pymdownx.arithmatex (generic mode) leaves as \( \) and \[ \] spans.
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
  });
});
