//! resource.Quantity, as the API server parses it: the one implementation lives in
//! `strata-quantity` (shared with the driver, which does not depend on the store).

pub use strata_quantity::{Format, Quantity, QuantityError, parse};
