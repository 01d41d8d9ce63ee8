"""Copies that outlive a deletion (SPEC §12): encrypted archives and their keys (`crypto`),
the restoration window (`vault`), backup lag (`backups`), the suppression list
(`suppression`), and asking services afterwards what they still hold (`verification`)."""
