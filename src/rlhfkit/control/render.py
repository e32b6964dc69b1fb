"""Trajectory segments as short animations, for people to compare in the feedback app.

Christiano et al. (2017), section 2.2.2: "the human overseer is given a visualization of two
trajectory segments, in the form of short movie clips". A segment keeps only observations and
actions, so each frame is drawn by putting the environment's renderer into the observed state
(:data:`STATE_FROM_OBS`) and calling ``render()`` (``render_mode="rgb_array"``, which needs
pygame: the ``control`` extra). Steps after the episode ended (the absorbing padding, see
:class:`~rlhfkit.control.reward.Segments`) show the last frame dimmed under the words
"episode over". The frames become an animated GIF (Pillow) in a ``data:`` URI that the
feedback app shows above each response.
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Callable

import numpy as np

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # pygame greets on import otherwise
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")  # pygame.init() looks for sound: none needed
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # headless: off-screen surfaces only


def _cartpole(env, obs: np.ndarray, action) -> None:
    env.state = np.asarray(obs, dtype=np.float64)  # (x, x_dot, theta, theta_dot) is the state


def _pendulum(env, obs: np.ndarray, action) -> None:
    # obs = (cos theta, sin theta, theta_dot); the renderer draws theta and the torque arrow
    env.state = np.array([math.atan2(obs[1], obs[0]), obs[2]])
    env.last_u = float(np.asarray(action).reshape(-1)[0]) if action is not None else None


def _acrobot(env, obs: np.ndarray, action) -> None:
    env.state = np.array([math.atan2(obs[1], obs[0]), math.atan2(obs[3], obs[2]), obs[4], obs[5]])


def _mountain_car(env, obs: np.ndarray, action) -> None:
    env.state = np.asarray(obs, dtype=np.float64)


STATE_FROM_OBS: dict[str, Callable] = {
    "CartPole-v0": _cartpole, "CartPole-v1": _cartpole, "Pendulum-v1": _pendulum,
    "Acrobot-v1": _acrobot, "MountainCar-v0": _mountain_car,
    "MountainCarContinuous-v0": _mountain_car,
}
"""How to put each environment's renderer into the state an observation shows."""

TASK_PROMPTS: dict[str, str] = {
    "CartPole-v1": "Which clip is better at keeping the pole upright and the cart near the "
                   "middle? A dimmed frame marked 'episode over' means the pole fell or the "
                   "cart left the track.",
    "Pendulum-v1": "Which clip is better at swinging the pendulum up and holding it still, "
                   "pointing straight up, with little effort? The arrow shows the torque.",
}
"""What a person is asked, per environment (``--feedback-prompt`` overrides it)."""


class SegmentRenderer:
    """Draws segments of one environment as animated GIFs.

    Args:
        env_id: Gymnasium id; must be in :data:`STATE_FROM_OBS`.
        width: Width of the animation in pixels (height keeps the aspect ratio).
        fps: Frames per second; None = the environment's own ``render_fps``.
    """

    def __init__(self, env_id: str, width: int = 240, fps: float | None = None) -> None:
        if env_id not in STATE_FROM_OBS:
            raise ValueError(f"cannot draw {env_id} segments: rendering knows "
                             f"{', '.join(STATE_FROM_OBS)} (add a state setter to "
                             "rlhfkit.control.render.STATE_FROM_OBS)")
        try:
            import gymnasium as gym
            import pygame  # noqa: F401  (gymnasium's classic-control renderer)
            from PIL import Image  # noqa: F401
        except ImportError as err:
            raise ImportError("drawing segments needs gymnasium, pygame and Pillow: "
                              "pip install 'rlhfkit[control]'") from err
        self.env = gym.make(env_id, render_mode="rgb_array")
        self.env.reset(seed=0)
        self._set = STATE_FROM_OBS[env_id]
        self.width = width
        self.fps = fps or self.env.metadata.get("render_fps", 30)

    def frames(self, obs: np.ndarray, actions: np.ndarray, absorbing: np.ndarray) -> list:
        """(K, D) observations, (K, ...) actions, (K,) absorbing flags -> K PIL images."""
        from PIL import Image, ImageDraw, ImageEnhance

        out, last = [], None
        for t in range(len(obs)):
            if absorbing[t] and last is not None:
                frame = ImageEnhance.Brightness(last).enhance(0.45)
                draw = ImageDraw.Draw(frame)
                draw.rectangle([0, 0, frame.width - 1, frame.height - 1], outline=(200, 30, 30),
                               width=4)
                draw.text((10, 8), "episode over", fill=(255, 255, 255))
                out.append(frame)
                continue
            self._set(self.env.unwrapped, np.asarray(obs[t]), actions[t])
            rgb = self.env.render()  # (H, W, 3) uint8
            image = Image.fromarray(rgb)
            height = round(image.height * self.width / image.width)
            last = image.resize((self.width, height), Image.Resampling.LANCZOS)
            out.append(last)
        return out

    def gif(self, obs: np.ndarray, actions: np.ndarray, absorbing: np.ndarray) -> bytes:
        """The segment as a looping animated GIF; the last frame is held for half a second."""
        frames = self.frames(obs, actions, absorbing)
        # GIF delays count in 10 ms; browsers play delays under 20 ms slowly, so never below 20.
        step_ms = max(20, int(round(100 / self.fps)) * 10)
        durations = [step_ms] * (len(frames) - 1) + [500]
        buf = io.BytesIO()
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:],
                       duration=durations, loop=0, optimize=False, disposal=1)
        return buf.getvalue()

    def data_uri(self, obs: np.ndarray, actions: np.ndarray, absorbing: np.ndarray) -> str:
        """:meth:`gif` as a ``data:image/gif;base64,…`` URI for the feedback app."""
        return "data:image/gif;base64," + base64.b64encode(self.gif(obs, actions,
                                                                    absorbing)).decode()

    def close(self) -> None:
        """Close the environment used for drawing."""
        self.env.close()
