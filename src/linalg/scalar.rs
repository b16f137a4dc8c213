//! The real element types the kernels run on (f32, f64), with the LAPACK machine constants.

use std::fmt::Debug;
use std::ops::{AddAssign, DivAssign, MulAssign, Neg, SubAssign};

use crate::DType;

/// `f32` or `f64`: what faer computes with, what bytemuck can view bytes as, and the few
/// scalar operations the hand-written LAPACK parts need.
pub(crate) trait Real:
    faer::traits::RealField
    + bytemuck::Pod
    + Copy
    + Debug
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
{
    const DTYPE: DType;
    const ZERO: Self;
    const ONE: Self;
    const NAN: Self;
    /// LAPACK's `dlamch('S')`: the smallest number whose reciprocal does not overflow.
    const SAFE_MIN: Self;
    /// LAPACK's `dlamch('E')`: the relative machine epsilon (half an ulp of one).
    const EPS: Self;

    fn magnitude(self) -> Self;
    fn square_root(self) -> Self;
    fn hypotenuse(self, other: Self) -> Self;
    /// `|self|` with the sign of `sign` (Fortran's `SIGN(self, sign)`, sign bit included).
    fn with_sign_of(self, sign: Self) -> Self;
    fn finite(self) -> bool;
    fn nan(self) -> bool;
}

macro_rules! impl_real {
    ($t:ty, $dtype:expr) => {
        impl Real for $t {
            const DTYPE: DType = $dtype;
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NAN: Self = <$t>::NAN;
            const SAFE_MIN: Self = <$t>::MIN_POSITIVE;
            const EPS: Self = <$t>::EPSILON * 0.5;

            fn magnitude(self) -> Self {
                self.abs()
            }
            fn square_root(self) -> Self {
                self.sqrt()
            }
            fn hypotenuse(self, other: Self) -> Self {
                self.hypot(other)
            }
            fn with_sign_of(self, sign: Self) -> Self {
                self.abs().copysign(sign)
            }
            fn finite(self) -> bool {
                self.is_finite()
            }
            fn nan(self) -> bool {
                self.is_nan()
            }
        }
    };
}

impl_real!(f32, DType::F32);
impl_real!(f64, DType::F64);

/// The Euclidean norm of `x` without overflow or underflow (LAPACK's `dnrm2`, scaled sum of
/// squares).
pub(crate) fn norm2<T: Real>(x: &[T]) -> T {
    let mut scale = T::ZERO;
    let mut ssq = T::ONE;
    for &v in x {
        if v != T::ZERO {
            let a = v.magnitude();
            if scale < a {
                let r = scale / a;
                ssq = T::ONE + ssq * r * r;
                scale = a;
            } else {
                let r = a / scale;
                ssq += r * r;
            }
        } else if v.nan() {
            return T::NAN;
        }
    }
    scale * ssq.square_root()
}
