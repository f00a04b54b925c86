"""The ensemble's section of its report: every member and the ensemble, scored on the same images."""

from __future__ import annotations

import html


def members_html(table: dict) -> str:
    """`table`: metrics.json's "ensemble" entry (pipelines.ensemble)."""
    splits = [s for s in ("val", "test") if s in table["ensemble"]]
    head = "".join(f"<th>{s} accuracy</th><th>{s} macro F1</th>" for s in splits)
    stacked = table["method"] == "stack"
    rows = []
    for r in table["members"]:
        cells = "".join(f"<td class='num'>{r[s]['accuracy']:.4f}</td><td class='num'>{r[s]['macro_f1']:.4f}</td>"
                        for s in splits)
        own = r["own_val_accuracy"]
        weight = "stacked" if stacked else f"{r['weight']:.3f}"
        rows.append(f"<tr><td>{html.escape(r['member'])}</td><td>{html.escape(r['kind'])} "
                    f"{html.escape(r['backbone'])} {r['resolution']}px</td><td class='num'>{weight}</td>"
                    f"{cells}<td class='num'>{'' if own is None else f'{own:.4f}'}</td></tr>")
    ensemble = "".join(f"<td class='num'><b>{table['ensemble'][s]['accuracy']:.4f}</b></td>"
                       f"<td class='num'><b>{table['ensemble'][s]['macro_f1']:.4f}</b></td>" for s in splits)
    rows.append(f"<tr><td><b>ensemble</b></td><td>{html.escape(table['method'])}</td><td></td>{ensemble}"
                "<td></td></tr>")
    note = (f"<p>Validation figures of the ensemble are {table['val_is']}"
            + (f" ({table['folds']} folds)" if table["folds"] else "") + "; members are scored on the same "
            "images through the ensemble's own network (the last column is the figure of the member's own run). "
            f"Best member: {html.escape(table['best_member'])}; the ensemble's validation accuracy is "
            f"{table['gain_over_best_member'] * 100:+.2f} points from it.</p>")
    return (f"{note}<table><thead><tr><th>member</th><th>model</th><th>weight</th>{head}"
            f"<th>own run's val accuracy</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
