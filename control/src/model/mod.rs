//! Domain types with EC2 names: ids, instance types, instance states and
//! their legal transitions, filters.
