// binary: 👍 / 👎 (keys y / n).
rlhfkit.register("binary", function (ctx) {
  const pick = ctx.choices(ctx.fieldset);
  return {
    collect: function () { return pick.value ? { answer: { value: pick.value } } : { error: "Choose 👍 or 👎." }; },
    key: function (k) {
      if (k !== "y" && k !== "n") return false;
      pick.set(k === "y" ? "up" : "down");
      return true;
    },
  };
});
