"""Small MovieLens-format samples written into tmp_path (never real MovieLens data)."""
from __future__ import annotations

import zipfile
from pathlib import Path

# (user, item, rating, timestamp) rows shared by the samples; user 2 has an accented movie.
ROWS = [
    (1, 10, 5.0, 978300760),
    (1, 20, 3.5, 978302109),
    (2, 10, 4.0, 978301968),
    (2, 30, 1.0, 978300275),
    (3, 20, 2.5, 978824291),
    (3, 40, 4.5, 978302268),
]
MOVIES = [
    (10, "Toy Story (1995)", ["Animation", "Children's", "Comedy"]),
    (20, "Misérables, Les (1995)", ["Drama", "Musical"]),
    (30, "Star Wars: Episode IV - A New Hope (1977)", ["Action", "Sci-Fi"]),
    (40, "City of Lost Children, The (Cité des enfants perdus, La) (1995)", ["Adventure", "Sci-Fi"]),
    (50, "Unrated Movie (2000)", ["(no genres listed)"]),
]
USERS = [  # id, gender, age code, occupation code, zip
    (1, "F", 1, 10, "48067"),
    (2, "M", 56, 16, "70072"),
    (3, "M", 25, 15, "55117"),
]


def write_ml1m(root: Path, *, half_stars: bool = False, with_users: bool = True) -> Path:
    """ml-1m layout ('::', latin-1); ml-10m when with_users=False (half-star ratings)."""
    root.mkdir(parents=True, exist_ok=True)
    rating = (lambda r: f"{r:g}") if half_stars else (lambda r: f"{int(round(r + 0.01))}")
    (root / "ratings.dat").write_bytes(
        "".join(f"{u}::{i}::{rating(r)}::{t}\n" for u, i, r, t in ROWS).encode("latin-1")
    )
    encoding = "latin-1" if with_users else "utf-8"
    (root / "movies.dat").write_bytes(
        "".join(f"{m}::{title}::{'|'.join(g)}\n" for m, title, g in MOVIES).encode(encoding)
    )
    if with_users:
        (root / "users.dat").write_bytes(
            "".join(f"{u}::{g}::{a}::{o}::{z}\n" for u, g, a, o, z in USERS).encode("latin-1")
        )
    return root


def write_ml25m(root: Path) -> Path:
    """ml-20m/ml-25m layout: CSV with headers, UTF-8, quoted titles."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r:g},{t}\n" for u, i, r, t in ROWS),
        encoding="utf-8",
    )
    lines = ["movieId,title,genres\n"]
    for m, title, g in MOVIES:
        quoted = f'"{title}"' if "," in title else title
        lines.append(f"{m},{quoted},{'|'.join(g)}\n")
    (root / "movies.csv").write_text("".join(lines), encoding="utf-8")
    return root


def zip_dir(src: Path, dest: Path, top: str) -> Path:
    """Zip ``src``'s files under a top-level folder ``top/``, like the GroupLens archives."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{top}/", "")
        for path in sorted(src.iterdir()):
            zf.write(path, f"{top}/{path.name}")
    return dest
