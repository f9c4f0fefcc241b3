// The rules of the names a caller chooses, in one place for every service, the edge and the CLI.

/** nameMaxLength is the longest name a caller may choose. */
export const nameMaxLength = 64;

/**
 * namePattern is the rule of every name a caller chooses: workflow reference names, account names
 * and datastore names. Refusals quote `namePattern.source`: ^[a-z0-9][a-z0-9_-]{0,63}$.
 */
export const namePattern = new RegExp(`^[a-z0-9][a-z0-9_-]{0,${nameMaxLength - 1}}$`);
