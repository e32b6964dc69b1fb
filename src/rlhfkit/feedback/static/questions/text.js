// write_prompt, demonstration, correction: the text in the fieldset's text box.
rlhfkit.register("text", function (ctx) {
  const box = ctx.fieldset.querySelector("textarea");
  return {
    collect: function () {
      return box.value.trim() ? { answer: { text: box.value } } : { error: box.dataset.empty };
    },
  };
});
