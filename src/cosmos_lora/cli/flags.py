"""Boolean options are flags: `--dry-run`, `--ema/--no-ema`, never `--dry-run true`.

typer 0.29 prints a type beside every option in its rich help, flags included (`--dry-run <bool>`),
which invites `--dry-run true`; click then reads `true` as a stray positional (posttrain takes it
for an override and says "Override 'true' is not key=value"). `Cli` is the `typer.Typer` every
command module registers on: its commands and groups show flags without a type and answer a
boolean word after a flag with one line that names the flag.
"""

import typer
from typer.core import TyperCommand, TyperGroup

from cosmos_lora.cli.output import report_user_error
from cosmos_lora.errors import UserError

TRUE_WORDS = {"true", "yes", "y", "on", "1", "t"}
FALSE_WORDS = {"false", "no", "n", "off", "0", "f"}


class _FlagsTakeNoValue:
    """Mixed into typer's command and group classes (before them, so these methods win)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # typer's rich help shows the metavar, when set, instead of `<bool>`
        return params

    def parse_args(self, ctx, args):
        if not ctx.resilient_parsing:
            try:
                check_no_value_after_flags(self.get_params(ctx), args, stop_at_positional=isinstance(self, TyperGroup))
            except UserError as error:
                raise report_user_error(error) from None
        return super().parse_args(ctx, args)


class FlagCommand(_FlagsTakeNoValue, TyperCommand):
    pass


class FlagGroup(_FlagsTakeNoValue, TyperGroup):
    pass


class Cli(typer.Typer):
    """A `typer.Typer` whose commands and groups are `FlagCommand`s and `FlagGroup`s unless told otherwise."""

    def __init__(self, **kwargs):
        super().__init__(cls=kwargs.pop("cls", FlagGroup), **kwargs)

    def command(self, name=None, *, cls=None, **kwargs):
        return super().command(name, cls=cls or FlagCommand, **kwargs)


def check_no_value_after_flags(params, args: list[str], stop_at_positional: bool = False) -> None:
    """A UserError for `--flag true` or `--flag=false`: flags take no value.

    Scanning stops at `--` (overrides follow) and, for a group, at its first positional (the
    subcommand, whose own arguments it checks itself).
    """
    flags = {opt: param for param in params if getattr(param, "is_flag", False) and not getattr(param, "count", False)
             for opt in (*param.opts, *param.secondary_opts)}
    for i, arg in enumerate(args):
        if arg == "--" or (stop_at_positional and not arg.startswith("-")):
            return
        flag, equals, value = arg.partition("=")
        if flag not in flags:
            continue
        if not equals:
            value = args[i + 1] if i + 1 < len(args) else ""
        if value.lower() in TRUE_WORDS | FALSE_WORDS:
            raise UserError(f"{flag} is a flag and takes no value ({flag}{'=' if equals else ' '}{value}).",
                            _how_to_write(flags[flag], flag, value.lower() in TRUE_WORDS))


def _how_to_write(param, flag: str, wanted_on: bool) -> str:
    on, off = param.opts[-1], (param.secondary_opts or [None])[-1]
    if flag in param.secondary_opts:  # `--no-ema true` means off, `--no-ema false` means on
        wanted_on = not wanted_on
    if wanted_on:
        return f"write {on} alone" + (f" (or {off} for the opposite)." if off else ".")
    return f"write {off}." if off else f"leave {on} out (it is off unless given)."
