"""Background work: the Dramatiq broker, the actors, and the relay that feeds them from the database."""
